// pkgctl fleet: every host's status under PREFIX/status/ in etcd (DESIGN §10), as pkgctxd
// --follow etcd writes it: one line per host and package, or one JSON array.
#include "pkgctl/cli.hpp"

#include <ostream>

#if PKGCTX_ETCD
#include "pkgctx/daemon/etcd.hpp"

#include <boost/json.hpp>

#include <iomanip>
#endif

namespace pkgctl {

int run_fleet(const std::string& endpoints, const std::string& prefix, bool as_json, Io io) {
#if PKGCTX_ETCD
  namespace json = boost::json;
  std::vector<std::string> urls;
  for (std::size_t i = 0; i <= endpoints.size();) {
    const std::size_t j = std::min(endpoints.find(',', i), endpoints.size());
    if (j > i) urls.push_back(endpoints.substr(i, j - i));
    i = j + 1;
  }
  const std::string status = prefix + "/status/";
  pkgctx::etcd::Client client(urls, -1, std::chrono::milliseconds(5000));
  auto listed = client.range_prefix(status);
  for (std::size_t tries = 1; !listed && tries < urls.size(); ++tries) listed = client.range_prefix(status);
  if (!listed) {
    io.err << "pkgctl: fleet: " << listed.error().message << '\n';
    return kExitUnreachable;
  }
  json::array rows;
  for (const pkgctx::etcd::KeyValue& kv : listed->kvs) {
    const std::string rest = kv.key.substr(status.size());
    const std::size_t slash = rest.find('/');
    if (slash == std::string::npos) continue;
    json::error_code ec;
    json::value v = json::parse(kv.value, ec);
    if (ec || !v.is_object()) continue;
    json::object row{{"host", rest.substr(0, slash)}, {"name", rest.substr(slash + 1)}};
    for (const auto& [k, val] : v.get_object()) row[k] = val;
    rows.push_back(std::move(row));
  }
  if (as_json) {
    io.out << json::serialize(rows) << '\n';
    return kExitOk;
  }
  const auto text = [](const json::object& o, std::string_view k) -> std::string {
    const json::value* v = o.if_contains(k);
    if (!v) return "-";
    return v->is_string() ? std::string(v->get_string()) : json::serialize(*v);
  };
  io.out << std::left << std::setw(20) << "HOST" << ' ' << std::setw(24) << "PACKAGE" << ' ' << std::setw(16)
         << "VERSION" << ' ' << std::setw(16) << "CHECKSUM" << ' ' << std::setw(10) << "REVISION" << ' ' << "DRAIN"
         << '\n';
  for (const json::value& r : rows) {
    const json::object& o = r.get_object();
    // A package etcd deleted whose tasks still run: "draining" and one line per holder.
    const json::value* holders = o.if_contains("holders");
    const json::array* list = holders && holders->is_array() ? &holders->get_array() : nullptr;
    const std::string version = text(o, "version");
    io.out << std::left << std::setw(20) << text(o, "host") << ' ' << std::setw(24) << text(o, "name") << ' '
           << std::setw(16) << (version.empty() ? "(removed)" : version) << ' ' << std::setw(16) << text(o, "checksum")
           << ' ' << std::setw(10) << text(o, "revision") << ' '
           << (list ? "draining, " + std::to_string(list->size()) + " holder" + (list->size() == 1 ? "" : "s") : "-")
           << '\n';
    if (!list) continue;
    for (const json::value& h : *list) {
      if (!h.is_object()) continue;
      const json::object& ho = h.get_object();
      io.out << "  holder pid " << text(ho, "pid") << " uid " << text(ho, "uid") << " comm " << text(ho, "comm")
             << " key " << text(ho, "key") << " generation " << text(ho, "generation") << " cause "
             << text(ho, "cause") << " age " << text(ho, "age_ms") << " ms\n";
    }
  }
  return kExitOk;
#else
  (void)endpoints, (void)prefix, (void)as_json;
  io.err << "pkgctl: fleet: this pkgctl was built without etcd support (PKGCTX_ETCD=OFF)\n";
  return kExitUsage;
#endif
}

}  // namespace pkgctl

#include "pkgctx/daemon/follower.hpp"

#include "pkgctx/daemon/etcd.hpp"
#include "pkgctx/daemon/log.hpp"
#include "pkgctx/settings.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace pkgctx::daemon {
namespace {

namespace json = boost::json;

constexpr std::uint64_t kFirstBackoffMs = 100, kMaxBackoffMs = 5000;
constexpr std::chrono::milliseconds kCallTimeout{5000};
constexpr std::size_t kOpsPerTxn = 100;  // etcd's default --max-txn-ops is 128

std::string hex16(std::uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = digits[v & 0xf];
  return s;
}

// A package value from etcd, checked as strictly as a socket update.
struct Desired {
  std::string version;
  Settings settings;
  std::uint64_t settings_version = 0;
  std::string maintenance;
  bool force = false;
};

Result<Desired> parse_desired(std::string_view text, const Limits& limits) {
  json::error_code ec;
  const json::value v = json::parse(text, ec);
  if (ec || !v.is_object()) return make_error(Errc::invalid_settings, "value is not a JSON object");
  const json::object& o = v.get_object();
  Desired d;
  for (const auto& [key, val] : o) {
    if (key == "version") {
      if (!val.is_string()) return make_error(Errc::invalid_version, "\"version\" must be a string");
      d.version = std::string(val.get_string());
    } else if (key == "settings") {
      if (!val.is_object()) return make_error(Errc::invalid_settings, "\"settings\" must be an object");
      auto s = Settings::parse(json::serialize(val), limits);
      if (!s) return s.error();
      d.settings = std::move(*s);
    } else if (key == "settings_version") {
      if (val.is_uint64()) d.settings_version = val.get_uint64();
      else if (val.is_int64() && val.get_int64() >= 0) d.settings_version = static_cast<std::uint64_t>(val.get_int64());
      else return make_error(Errc::invalid_settings, "\"settings_version\" must be an integer ≥ 0");
    } else if (key == "maintenance") {
      if (!val.is_string()) return make_error(Errc::invalid_maintenance, "\"maintenance\" must be a string");
      d.maintenance = std::string(val.get_string());
    } else if (key == "force") {
      if (!val.is_bool()) return make_error(Errc::invalid_settings, "\"force\" must be true or false");
      d.force = val.get_bool();
    } else {
      return make_error(Errc::invalid_settings, "unknown field \"" + std::string(key) + "\"");
    }
  }
  if (d.version.empty()) return make_error(Errc::invalid_version, "\"version\" is missing");
  return d;
}

}  // namespace

EtcdFollower::EtcdFollower(Store& store, FollowOptions options)
    : store_(store),
      o_(std::move(options)),
      packages_prefix_(o_.prefix + "/packages/"),
      status_prefix_(o_.prefix + "/status/" + o_.host + "/") {}

EtcdFollower::~EtcdFollower() {
  stop();
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

Result<void> EtcdFollower::start() {
  started_ = std::chrono::steady_clock::now();
  load_owned();
  stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_fd_ < 0) return make_error(Errc::io_error, std::string("eventfd: ") + std::strerror(errno));
  try {
    follower_ = std::thread([this] { follow_loop(); });
    reporter_ = std::thread([this] { status_loop(); });
  } catch (const std::system_error& e) {
    stop();
    return make_error(Errc::io_error, std::string("starting the etcd threads: ") + e.what());
  }
  return {};
}

void EtcdFollower::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  drained_.notify_all();
  if (stop_fd_ >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(stop_fd_, &one, sizeof one);
  }
  if (follower_.joinable()) follower_.join();
  if (reporter_.joinable()) reporter_.join();
}

bool EtcdFollower::owns(std::string_view name) const {
  std::lock_guard lock(mu_);
  return owned_.find(name) != owned_.end();
}

bool EtcdFollower::pause(std::uint64_t ms) const {
  pollfd p{stop_fd_, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(ms)) == 0;
}

void EtcdFollower::mark(const std::string& name) {
  {
    std::lock_guard lock(mu_);
    dirty_.insert(name);
  }
  changed_.notify_all();
}

std::uint64_t EtcdFollower::wakes() const noexcept {
  return store_.segment().header().wakes.load(std::memory_order_relaxed);
}

void EtcdFollower::woke_since(std::uint64_t wakes_before) {
  if (o_.woke && wakes() != wakes_before) o_.woke(wakes_before);
}

std::string EtcdFollower::package_name(std::string_view key) const {
  if (!key.starts_with(packages_prefix_)) return {};
  const std::string_view name = key.substr(packages_prefix_.size());
  if (!validate_name(name, store_.limits())) {
    log::warning("etcd: ignoring key " + std::string(key) + ": not a package name");
    return {};
  }
  return std::string(name);
}

// --- applying --------------------------------------------------------------------------------

void EtcdFollower::apply_put(const std::string& name, std::string_view value, std::uint64_t revision, bool allow_force) {
  bool added = false;
  {
    std::lock_guard lock(mu_);
    added = owned_.insert(name).second;
  }
  if (added) save_owned();  // before the package exists: the file never misses one etcd owns
  auto d = parse_desired(value, store_.limits());
  if (d) {
    UpdateOptions opts;
    opts.settings_version = d->settings_version;
    opts.maintenance = d->maintenance;
    opts.force = d->force && allow_force;
    opts.follow_revision = revision;
    const std::uint64_t wakes_before = wakes();
    auto r = store_.update(name, d->version, d->settings, opts);
    woke_since(wakes_before);
    if (r) {
      if (r->change != Change::none) {
        const std::string rev = revision ? std::to_string(revision) : std::string();
        log::info("etcd: applied " + name + " " + d->version + " (" + std::string(change_name(r->change)) +
                      (revision ? ", revision " + rev : std::string()) + ")",
                  {{"PKGCTX_OP", "update"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", "ok"},
                   {"PKGCTX_CHANGE", change_name(r->change)}, {"PKGCTX_REVISION", rev}});
        mark(name);
      }
      return;
    }
    d = r.error();
  }
  const std::string rev = revision ? std::to_string(revision) : std::string();
  log::error("etcd: skipping " + packages_prefix_ + name + (revision ? " at revision " + rev : "") + ": " +
                 d.error().message,
             {{"PKGCTX_OP", "update"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", errc_name(d.error().code)},
              {"PKGCTX_REVISION", rev}});
  store_.set_follow_revision(revision);  // applied as far as it can be: never retried
}

bool EtcdFollower::drain(const std::string& name) {
  std::uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    id = ++drain_seq_;
    draining_[name];
  }
  // Workers of a re-attached segment re-register within their retry period (200 ms,
  // worker-sdk registration.cpp) of the daemon's start; a drain begun before that would not see
  // their leases, so one in that first stretch waits the rest of it out.
  const auto grace_end = started_ + std::chrono::milliseconds(o_.reregister_grace_ms);
  if (const auto now = std::chrono::steady_clock::now(); now < grace_end) {
    mark(name);  // pending meanwhile: reported with no holders yet
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(grace_end - now).count();
    if (!pause(static_cast<std::uint64_t>(left) + 1)) {
      std::lock_guard lock(mu_);
      draining_.erase(name);
      return false;
    }
  }
  // Shared with the loop's callback, which may come after this wait gave up.
  struct Outcome {
    bool drained = true;
    std::vector<Holder> left;
  };
  auto outcome = std::make_shared<Outcome>();
  // The callbacks run on the loop thread, which stops before this object is destroyed.
  o_.drain(
      name, o_.drain_ms,
      [this, name](const std::vector<Holder>& holders) {
        {
          std::lock_guard lock(mu_);
          if (auto it = draining_.find(name); it != draining_.end()) it->second = holders;
        }
        mark(name);
      },
      [this, id, outcome](bool drained, const std::vector<Holder>& holders) {
        std::lock_guard lock(mu_);
        outcome->drained = drained;
        outcome->left = holders;
        drain_done_ = std::max(drain_done_, id);
        drained_.notify_all();
      });
  std::unique_lock lock(mu_);
  // The loop ends the drain by its deadline; the margin only covers a loop that stopped first.
  const bool ended = drained_.wait_for(lock, std::chrono::milliseconds(o_.drain_ms + 5000),
                                       [&] { return stopping_ || drain_done_ >= id; });
  draining_.erase(name);
  if (stopping_ && drain_done_ < id) return false;
  const bool drained = outcome->drained;
  const std::vector<Holder> left = outcome->left;
  lock.unlock();
  if (!ended) {
    log::warning("etcd: the drain of " + name + " got no answer from the event loop; deleting it");
  } else if (!drained) {
    std::string who;
    for (const Holder& h : left)
      who += (who.empty() ? "" : ", ") + ("pid " + std::to_string(h.pid) + " (" + h.comm + ") key " + std::to_string(h.key));
    log::warning("etcd: deleting " + name + " with " + std::to_string(left.size()) + " task(s) still running after " +
                     std::to_string(o_.drain_ms) + " ms (etcd_drain_ms): " + who,
                 {{"PKGCTX_OP", "drain"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", "timed_out"},
                  {"PKGCTX_HOLDERS", std::to_string(left.size())}});
  }
  return true;
}

bool EtcdFollower::apply_delete(const std::string& name, std::uint64_t revision) {
  const std::string rev = revision ? std::to_string(revision) : std::string();
  // The remove first (cancels the contexts with cause "removed"), unless a run cut short by a
  // crash already did it: a replay must not cancel twice.
  auto rec = store_.view().read(name, false);
  if (rec && !rec->version.empty()) {
    const std::uint64_t wakes_before = wakes();
    auto r = store_.handle_event(kEventRemove, name);
    woke_since(wakes_before);
    if (!r)
      log::error("etcd: removing " + name + ": " + r.error().message,
                 {{"PKGCTX_OP", "event"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", errc_name(r.error().code)},
                  {"PKGCTX_REVISION", rev}});
  }
  if (rec && o_.drain && !drain(name)) return false;
  const std::uint64_t wakes_before = wakes();
  auto r = store_.erase(name, revision);
  woke_since(wakes_before);
  // The package stayed etcd's (local writes refused) until now; the file forgets it only after
  // the Delete, so it never misses a package etcd owns.
  {
    std::lock_guard lock(mu_);
    owned_.erase(name);
  }
  save_owned();
  if (!r) {
    log::error("etcd: deleting " + name + ": " + r.error().message,
               {{"PKGCTX_OP", "delete"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", errc_name(r.error().code)},
                {"PKGCTX_REVISION", rev}});
    store_.set_follow_revision(revision);
    return true;
  }
  if (*r) {
    log::info("etcd: deleted " + name + (revision ? " (revision " + rev + ")" : std::string()),
              {{"PKGCTX_OP", "delete"}, {"PKGCTX_PACKAGE", name}, {"PKGCTX_RESULT", "ok"}, {"PKGCTX_REVISION", rev}});
    mark(name);
  }
  return true;
}

bool EtcdFollower::apply_revision(const std::vector<etcd::Event>& events, std::size_t begin, std::size_t end) {
  for (std::size_t i = begin; i < end; ++i) {
    const etcd::Event& e = events[i];
    // Only the revision's last event commits the revision (see the header).
    const std::uint64_t rev = i + 1 == end ? static_cast<std::uint64_t>(e.kv.mod_revision) : 0;
    const std::string name = package_name(e.kv.key);
    if (name.empty()) {
      store_.set_follow_revision(rev);
      continue;
    }
    if (e.is_delete) {
      if (!apply_delete(name, rev)) return false;
    } else {
      apply_put(name, e.kv.value, rev, true);
    }
  }
  return true;
}

Result<void> EtcdFollower::resync(etcd::Client& client) {
  auto listed = client.range_prefix(packages_prefix_);
  if (!listed) return listed.error();
  std::set<std::string, std::less<>> desired, owned_before;
  {
    std::lock_guard lock(mu_);
    owned_before = owned_;
  }
  for (const etcd::KeyValue& kv : listed->kvs) {
    const std::string name = package_name(kv.key);
    if (name.empty()) continue;
    desired.insert(name);
    apply_put(name, kv.value, 0, false);
  }
  auto present = store_.view().list(false);
  if (!present) return present.error();
  // Only what etcd owned goes: a package created through the socket is not etcd's to delete.
  for (const PackageRecord& p : *present)
    if (desired.find(p.name) == desired.end() && owned_before.find(p.name) != owned_before.end() &&
        !apply_delete(p.name, 0))
      return make_error(Errc::io_error, "stopped during the resynchronisation");
  {
    std::lock_guard lock(mu_);
    owned_ = std::move(desired);
  }
  save_owned();
  store_.set_follow_revision(static_cast<std::uint64_t>(listed->revision));
  log::notice("etcd: synchronised with " + client.endpoint() + " at revision " + std::to_string(listed->revision) +
              " (" + std::to_string(listed->kvs.size()) + " packages)");
  return {};
}

Result<void> EtcdFollower::refresh_owned(etcd::Client& client) {
  auto listed = client.range_prefix(packages_prefix_, true);
  if (!listed) return listed.error();
  std::set<std::string, std::less<>> names;
  for (const etcd::KeyValue& kv : listed->kvs)
    if (std::string name = package_name(kv.key); !name.empty()) names.insert(std::move(name));
  // Added to, not replaced: a package etcd deleted while nobody watched is still etcd's until its
  // delete event (replayed next) or the resync (when that was compacted) deletes it.
  bool added = false;
  {
    std::lock_guard lock(mu_);
    for (const std::string& name : names) added = owned_.insert(name).second || added;
  }
  if (added) save_owned();
  return {};
}

// --- the owned set's file ----------------------------------------------------------------------
//
// "pkgctx-etcd-owned 1 EPOCH PREFIX" then one package name a line (names have no blanks). Kept
// beside the segment (same runtime directory, same lifetime: a tmpfs both), tied to the segment's
// epoch and the prefix, so a recreated segment or another prefix starts with an empty set.

void EtcdFollower::load_owned() {
  if (o_.owned_file.empty()) return;
  std::ifstream f(o_.owned_file);
  if (!f) return;  // none yet
  std::string magic, version, epoch, prefix;
  f >> magic >> version >> epoch >> prefix;
  if (magic != "pkgctx-etcd-owned" || version != "1" || epoch != hex16(store_.segment().header().prefix.epoch) ||
      prefix != o_.prefix) {
    log::notice("etcd: ignoring " + o_.owned_file + ": written for another segment or prefix");
    return;
  }
  std::set<std::string, std::less<>> names;
  for (std::string name; f >> name;)
    if (validate_name(name, store_.limits())) names.insert(std::move(name));
  std::lock_guard lock(mu_);
  owned_ = std::move(names);
}

void EtcdFollower::save_owned() {
  if (o_.owned_file.empty()) return;
  std::string text = "pkgctx-etcd-owned 1 " + hex16(store_.segment().header().prefix.epoch) + " " + o_.prefix + "\n";
  {
    std::lock_guard lock(mu_);
    for (const std::string& name : owned_) text += name + "\n";
  }
  // A whole new file renamed over the old one: a crash leaves one or the other, never half.
  const std::string tmp = o_.owned_file + ".new";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  bool ok = fd >= 0;
  for (std::size_t done = 0; ok && done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    ok = n > 0;
    done += ok ? static_cast<std::size_t>(n) : 0;
  }
  if (fd >= 0) ::close(fd);
  if (!ok || ::rename(tmp.c_str(), o_.owned_file.c_str()) != 0) {
    log::error("etcd: cannot write " + o_.owned_file + ": " + std::strerror(errno) +
               " (after a restart with etcd unreachable, local writes to etcd's packages would pass)");
    ::unlink(tmp.c_str());
  }
}

void EtcdFollower::follow_loop() {
  etcd::Client client(o_.endpoints, stop_fd_, kCallTimeout);
  std::unique_ptr<etcd::Client> probe;  // on the watched member, kept while it stays the same
  std::uint64_t backoff = kFirstBackoffMs;
  bool need_resync = false, reachable = true;
  const auto failed = [&](const Error& e) {
    if (reachable) log::warning("etcd: " + e.message + "; serving the local state, retrying");
    reachable = false;
    const bool go_on = pause(backoff);
    backoff = std::min(backoff * 2, kMaxBackoffMs);
    return go_on;
  };
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
    if (need_resync || store_.follow_revision() == 0) {
      if (auto r = resync(client); !r) {
        if (!failed(r.error())) return;
        continue;
      }
      need_resync = false;
    } else if (auto r = refresh_owned(client); !r) {
      if (!failed(r.error())) return;
      continue;
    }
    const std::uint64_t from = store_.follow_revision() + 1;
    if (auto r = client.watch(packages_prefix_, static_cast<std::int64_t>(from)); !r) {
      if (!failed(r.error())) return;
      continue;
    }
    log::notice("etcd: following " + packages_prefix_ + " on " + client.endpoint() + " from revision " +
                std::to_string(from));
    reachable = true;
    backoff = kFirstBackoffMs;
    while (true) {
      auto w = client.next(std::chrono::milliseconds(o_.watch_idle_ms));
      if (!w && w.error().code == Errc::timed_out) {
        // A quiet prefix, or a member that hangs (stopped, or cut off from its quorum while its
        // socket stays open): ask it on a second connection, bounded by the same time.
        if (!probe || probe->endpoint() != client.endpoint())
          probe = std::make_unique<etcd::Client>(std::vector<std::string>{client.endpoint()}, stop_fd_,
                                                 std::chrono::milliseconds(o_.watch_idle_ms));
        auto p = probe->probe(packages_prefix_);
        if (p) continue;
        {
          std::lock_guard lock(mu_);
          if (stopping_) return;
        }
        log::warning("etcd: " + client.endpoint() + " does not answer (" + p.error().message +
                     "); following through the next member");
        client.next_endpoint();
        break;
      }
      if (!w) {
        std::lock_guard lock(mu_);
        if (stopping_) return;
        log::warning("etcd: watch lost: " + w.error().message);
        break;
      }
      if (w->compact_revision > 0) {
        log::notice("etcd: revision " + std::to_string(from) + " was compacted (now " +
                    std::to_string(w->compact_revision) + "): resynchronising");
        need_resync = true;
        break;
      }
      if (w->canceled) {
        log::warning("etcd: watch cancelled by the server; watching again");
        break;
      }
      for (std::size_t i = 0; i < w->events.size();) {
        std::size_t j = i + 1;
        while (j < w->events.size() && w->events[j].kv.mod_revision == w->events[i].kv.mod_revision) ++j;
        if (static_cast<std::uint64_t>(w->events[i].kv.mod_revision) > store_.follow_revision() &&
            !apply_revision(w->events, i, j))
          return;  // stopped mid-revision: the restarted daemon applies it again
        i = j;
      }
    }
  }
}

// --- reporting -------------------------------------------------------------------------------

void EtcdFollower::status_loop() {
  etcd::Client client(o_.endpoints, stop_fd_, kCallTimeout);
  std::int64_t lease = 0;
  std::uint64_t backoff = kFirstBackoffMs;
  const auto keepalive_every = std::chrono::milliseconds(o_.status_ttl_s * 1000u / 3);
  auto next_keepalive = std::chrono::steady_clock::now();
  bool everything = true;  // a new lease: every package's status is written again
  while (true) {
    std::set<std::string> batch;
    {
      std::unique_lock lock(mu_);
      changed_.wait_until(lock, next_keepalive, [&] { return stopping_ || !dirty_.empty() || everything; });
      if (stopping_) return;
      batch = std::exchange(dirty_, {});
    }
    const auto retry = [&](std::set<std::string> names) {
      {
        std::lock_guard lock(mu_);
        dirty_.insert(names.begin(), names.end());
      }
      const bool go_on = pause(backoff);
      backoff = std::min(backoff * 2, kMaxBackoffMs);
      return go_on;
    };
    if (lease == 0) {
      auto granted = client.lease_grant(o_.status_ttl_s);
      if (!granted) {
        if (!retry(std::move(batch))) return;
        continue;
      }
      lease = *granted;
      everything = true;
      next_keepalive = std::chrono::steady_clock::now() + keepalive_every;
    } else if (std::chrono::steady_clock::now() >= next_keepalive) {
      if (auto k = client.lease_keepalive(lease); !k) {
        if (k.error().code == Errc::no_such_package) lease = 0;  // expired: grant anew
        if (!retry(std::move(batch))) return;
        continue;
      }
      next_keepalive = std::chrono::steady_clock::now() + keepalive_every;
    }
    if (everything) {
      if (auto all = store_.view().list(false))
        for (const PackageRecord& p : *all) batch.insert(p.name);
    }
    std::vector<etcd::Client::Op> ops;
    const std::uint64_t revision = store_.follow_revision();
    for (const std::string& name : batch) {
      auto rec = store_.view().read(name, false);
      std::optional<std::vector<Holder>> holders;
      {
        std::lock_guard lock(mu_);
        if (auto it = draining_.find(name); it != draining_.end()) holders = it->second;
      }
      // A removed package waiting for its tasks stays reported (with them) until it is deleted.
      if (!rec || (rec->version.empty() && !holders)) {
        ops.push_back({status_prefix_ + name, {}, true});
        continue;
      }
      json::object st{{"version", rec->version},
                      {"checksum", hex16(rec->checksum)},
                      {"settings_version", rec->settings_version},
                      {"maintenance", rec->maintenance},
                      {"revision", revision}};
      if (holders) {
        json::array list;
        for (const Holder& h : *holders)
          list.push_back(json::object{{"pid", h.pid}, {"uid", h.uid}, {"comm", h.comm}, {"key", h.key},
                                      {"generation", h.generation}, {"cause", h.cause}, {"age_ms", h.age_ms}});
        st["holders"] = std::move(list);
      }
      ops.push_back({status_prefix_ + name, json::serialize(st), false});
    }
    bool ok = true;
    for (std::size_t i = 0; i < ops.size() && ok; i += kOpsPerTxn) {
      const std::vector<etcd::Client::Op> chunk(ops.begin() + static_cast<std::ptrdiff_t>(i),
                                                ops.begin() + static_cast<std::ptrdiff_t>(std::min(ops.size(), i + kOpsPerTxn)));
      ok = static_cast<bool>(client.txn(chunk, lease));
    }
    if (!ok) {
      if (!retry(std::move(batch))) return;
      continue;
    }
    everything = false;
    backoff = kFirstBackoffMs;
    if (!pause(50)) return;  // coalesce the next changes into one batch
  }
}

}  // namespace pkgctx::daemon

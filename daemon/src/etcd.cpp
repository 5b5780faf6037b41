// etcd's v3 JSON gateway over HTTP/1.1: Beast's message parser and serializer on a plain
// socket whose every wait is a poll() on the socket and the stop descriptor, so a call has a
// deadline and can be interrupted from another thread (Beast's own timeouts need asio's async
// operations and an io_context thread).
#include "pkgctx/daemon/etcd.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <optional>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

namespace pkgctx::etcd {
namespace {

namespace http = boost::beast::http;
namespace json = boost::json;
using boost::system::error_code;

std::uint64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1'000'000u;
}

std::string b64(std::string_view s) {
  namespace b = boost::beast::detail::base64;
  std::string out(b::encoded_size(s.size()), '\0');
  out.resize(b::encode(out.data(), s.data(), s.size()));
  return out;
}

std::string unb64(std::string_view s) {
  namespace b = boost::beast::detail::base64;
  std::string out(b::decoded_size(s.size()), '\0');
  out.resize(b::decode(out.data(), s.data(), s.size()).first);
  return out;
}

// The gateway writes int64 fields as strings ("revision":"12") and omits zero values.
std::int64_t int_field(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (!v) return 0;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) return static_cast<std::int64_t>(v->get_uint64());
  if (v->is_string()) {
    const json::string& s = v->get_string();
    std::int64_t n = 0;
    std::from_chars(s.data(), s.data() + s.size(), n);
    return n;
  }
  return 0;
}

// Member ids are uint64 and use the whole range.
std::uint64_t uint_field(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (!v) return 0;
  if (v->is_uint64()) return v->get_uint64();
  if (v->is_int64()) return static_cast<std::uint64_t>(v->get_int64());
  if (v->is_string()) {
    const json::string& s = v->get_string();
    std::uint64_t n = 0;
    std::from_chars(s.data(), s.data() + s.size(), n);
    return n;
  }
  return 0;
}

std::string str_field(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

KeyValue parse_kv(const json::object& o) {
  KeyValue kv;
  kv.key = unb64(str_field(o, "key"));
  kv.value = unb64(str_field(o, "value"));
  kv.create_revision = int_field(o, "create_revision");
  kv.mod_revision = int_field(o, "mod_revision");
  return kv;
}

const json::object& object_at(const json::object& o, std::string_view key) {
  static const json::object empty;
  const json::value* v = o.if_contains(key);
  return v && v->is_object() ? v->get_object() : empty;
}

// A connected TCP socket as a Beast SyncReadStream/SyncWriteStream: each wait is bounded by the
// deadline (0: none) and ends early when the stop descriptor becomes readable.
class Socket {
 public:
  Socket(int fd, int stop_fd) : fd_(fd), stop_fd_(stop_fd) {}
  ~Socket() { ::close(fd_); }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  void set_deadline(std::uint64_t deadline_ms) { deadline_ms_ = deadline_ms; }

  template <class Buffers>
  std::size_t read_some(const Buffers& buffers, error_code& ec) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::mutable_buffer b = *it;
      if (b.size() == 0) continue;
      if (!wait(POLLIN, ec)) return 0;
      const ssize_t n = ::recv(fd_, b.data(), b.size(), 0);
      if (n > 0) return static_cast<std::size_t>(n);
      ec = n == 0 ? error_code(boost::asio::error::eof) : error_code(errno, boost::system::system_category());
      return 0;
    }
    ec = {};
    return 0;
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& buffers) {
    error_code ec;
    const std::size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& buffers, error_code& ec) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::const_buffer b = *it;
      if (b.size() == 0) continue;
      if (!wait(POLLOUT, ec)) return 0;
      const ssize_t n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL);
      if (n >= 0) return static_cast<std::size_t>(n);
      ec = error_code(errno, boost::system::system_category());
      return 0;
    }
    ec = {};
    return 0;
  }
  template <class Buffers>
  std::size_t write_some(const Buffers& buffers) {
    error_code ec;
    const std::size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  // Waits for `events` on the socket; false (ec set) on timeout, stop or a poll error.
  bool wait(short events, error_code& ec) const {
    while (true) {
      int timeout = -1;
      if (deadline_ms_ != 0) {
        const std::uint64_t now = now_ms();
        if (now >= deadline_ms_) {
          ec = boost::asio::error::timed_out;
          return false;
        }
        timeout = static_cast<int>(std::min<std::uint64_t>(deadline_ms_ - now, 60'000));
      }
      pollfd p[2] = {{fd_, events, 0}, {stop_fd_, POLLIN, 0}};
      const int r = ::poll(p, stop_fd_ >= 0 ? 2 : 1, timeout);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        ec = error_code(errno, boost::system::system_category());
        return false;
      }
      if (stop_fd_ >= 0 && (p[1].revents & POLLIN)) {
        ec = boost::asio::error::operation_aborted;
        return false;
      }
      if (p[0].revents != 0) return true;
    }
  }

  int fd() const { return fd_; }

 private:
  int fd_;
  int stop_fd_;
  std::uint64_t deadline_ms_ = 0;
};

struct Endpoint {
  std::string url, host, port;
};

Endpoint parse_endpoint(const std::string& url) {
  Endpoint e{url, {}, "2379"};
  std::string_view rest = url;
  if (rest.starts_with("http://")) rest.remove_prefix(7);
  if (const auto slash = rest.find('/'); slash != std::string_view::npos) rest = rest.substr(0, slash);
  if (const auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    e.port = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
  }
  e.host = std::string(rest);
  return e;
}

}  // namespace

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

struct Client::Impl {
  std::vector<Endpoint> endpoints;
  std::size_t current = 0;
  int stop_fd;
  std::chrono::milliseconds timeout;
  std::unique_ptr<Socket> sock;
  boost::beast::flat_buffer buf;
  // The open watch stream.
  std::optional<http::response_parser<http::string_body>> stream;
  json::stream_parser messages;

  Error fail(const std::string& what) {
    sock.reset();
    stream.reset();
    const std::string url = endpoints[current].url;
    current = (current + 1) % endpoints.size();  // the next call tries the next member
    return make_error(Errc::daemon_unreachable, "etcd " + url + ": " + what);
  }

  Result<void> connect() {
    if (sock) return {};
    const Endpoint& e = endpoints[current];
    addrinfo* res = nullptr;
#if PKGCTX_ETCD_NUMERIC_ONLY
    // IP literals only (see daemon/CMakeLists.txt): one address built by hand.
    sockaddr_storage ss{};
    addrinfo numeric{};
    const std::string host = e.host == "localhost" ? "127.0.0.1" : e.host;
    std::uint16_t port = 0;
    std::from_chars(e.port.data(), e.port.data() + e.port.size(), port);
    if (auto* v4 = reinterpret_cast<sockaddr_in*>(&ss); ::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(port);
      numeric.ai_addrlen = sizeof(sockaddr_in);
    } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss); ::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(port);
      numeric.ai_addrlen = sizeof(sockaddr_in6);
    } else {
      return fail("not an IP address (pkgctl takes numeric endpoints)");
    }
    numeric.ai_family = ss.ss_family;
    numeric.ai_socktype = SOCK_STREAM;
    numeric.ai_addr = reinterpret_cast<sockaddr*>(&ss);
    res = &numeric;
#else
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (const int rc = ::getaddrinfo(e.host.c_str(), e.port.c_str(), &hints, &res); rc != 0)
      return fail(std::string("resolving: ") + ::gai_strerror(rc));
#endif
    std::string why = "no address";
    for (addrinfo* a = res; a; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) continue;
      auto s = std::make_unique<Socket>(fd, stop_fd);
      if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
        why = std::strerror(errno);
        continue;
      }
      s->set_deadline(now_ms() + static_cast<std::uint64_t>(timeout.count()));
      error_code ec;
      if (!s->wait(POLLOUT, ec)) {
        why = ec.message();
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        why = std::strerror(err);
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // requests are single writes
      sock = std::move(s);
      break;
    }
#if !PKGCTX_ETCD_NUMERIC_ONLY
    ::freeaddrinfo(res);
#endif
    if (!sock) return fail("connecting: " + why);
    buf.clear();
    return {};
  }

  Result<void> send(std::string_view path, const json::object& body) {
    if (auto ok = connect(); !ok) return ok;
    http::request<http::string_body> rq{http::verb::post, std::string(path), 11};
    rq.set(http::field::host, endpoints[current].host);
    rq.set(http::field::content_type, "application/json");
    rq.body() = json::serialize(body);
    rq.prepare_payload();
    error_code ec;
    http::write(*sock, rq, ec);
    if (ec) return fail("sending " + std::string(path) + ": " + ec.message());
    return {};
  }

  // One unary call: the answer's JSON object, or an error (gRPC errors keep their message).
  Result<json::object> call(std::string_view path, const json::object& body) {
    stream.reset();
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool fresh = !sock;
      if (auto ok = send(path, body); !ok) return ok.error();
      sock->set_deadline(now_ms() + static_cast<std::uint64_t>(timeout.count()));
      http::response_parser<http::string_body> p;
      p.body_limit(64u << 20);
      error_code ec;
      http::read(*sock, buf, p, ec);
      sock->set_deadline(0);
      if (ec) {
        // A kept-alive connection the server closed meanwhile: once more on a new one.
        const bool stale = !fresh && (ec == boost::asio::error::eof || ec == http::error::end_of_stream ||
                                      ec == boost::asio::error::connection_reset);
        auto e = fail(std::string(path) + ": " + ec.message());
        if (stale && attempt == 0) {
          current = (current + endpoints.size() - 1) % endpoints.size();  // same member again
          continue;
        }
        return e;
      }
      if (!p.get().keep_alive()) sock.reset();
      json::error_code jec;
      json::value v = json::parse(p.get().body(), jec);
      if (jec || !v.is_object()) return fail(std::string(path) + ": HTTP " + std::to_string(p.get().result_int()) + ", not JSON");
      json::object& o = v.get_object();
      if (p.get().result() != http::status::ok) {
        const std::string msg = str_field(o, "error").empty() ? str_field(o, "message") : str_field(o, "error");
        const std::int64_t code = int_field(o, "code");
        // NotFound (5): an expired or unknown lease.
        if (code == 5) return make_error(Errc::no_such_package, "etcd " + endpoints[current].url + ": " + msg);
        return fail(std::string(path) + ": HTTP " + std::to_string(p.get().result_int()) + ": " + msg);
      }
      return std::move(o);
    }
    return fail(std::string(path) + ": no answer");
  }
};

Client::Client(std::vector<std::string> endpoints, int stop_fd, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  for (const std::string& u : endpoints) impl_->endpoints.push_back(parse_endpoint(u));
  if (impl_->endpoints.empty()) impl_->endpoints.push_back(parse_endpoint("http://127.0.0.1:2379"));
  impl_->stop_fd = stop_fd;
  impl_->timeout = timeout;
}

Client::~Client() = default;

const std::string& Client::endpoint() const { return impl_->endpoints[impl_->current].url; }

Result<RangeResult> Client::range_prefix(std::string_view prefix, bool keys_only) {
  json::object rq{{"key", b64(prefix)}, {"range_end", b64(prefix_end(prefix))}};
  if (keys_only) rq["keys_only"] = true;
  auto r = impl_->call("/v3/kv/range", rq);
  if (!r) return r.error();
  RangeResult out;
  out.revision = int_field(object_at(*r, "header"), "revision");
  if (const json::value* kvs = r->if_contains("kvs"); kvs && kvs->is_array())
    for (const json::value& kv : kvs->get_array())
      if (kv.is_object()) out.kvs.push_back(parse_kv(kv.get_object()));
  return out;
}

Result<std::int64_t> Client::probe(std::string_view key) {
  auto r = impl_->call("/v3/kv/range", json::object{{"key", b64(key)}, {"count_only", true}});
  if (!r) return r.error();
  return int_field(object_at(*r, "header"), "revision");
}

void Client::next_endpoint() { static_cast<void>(impl_->fail("left")); }

Result<std::int64_t> Client::put(std::string_view key, std::string_view value, std::int64_t lease) {
  json::object rq{{"key", b64(key)}, {"value", b64(value)}};
  if (lease != 0) rq["lease"] = std::to_string(lease);
  auto r = impl_->call("/v3/kv/put", rq);
  if (!r) return r.error();
  return int_field(object_at(*r, "header"), "revision");
}

Result<std::int64_t> Client::delete_key(std::string_view key) {
  auto r = impl_->call("/v3/kv/deleterange", json::object{{"key", b64(key)}});
  if (!r) return r.error();
  return int_field(object_at(*r, "header"), "revision");
}

Result<std::int64_t> Client::txn(const std::vector<Op>& ops, std::int64_t lease) {
  json::array success;
  for (const Op& op : ops) {
    if (op.is_delete) {
      success.push_back(json::object{{"request_delete_range", json::object{{"key", b64(op.key)}}}});
    } else {
      json::object put{{"key", b64(op.key)}, {"value", b64(op.value)}};
      if (lease != 0) put["lease"] = std::to_string(lease);
      success.push_back(json::object{{"request_put", std::move(put)}});
    }
  }
  auto r = impl_->call("/v3/kv/txn", json::object{{"success", std::move(success)}});
  if (!r) return r.error();
  return int_field(object_at(*r, "header"), "revision");
}

Result<std::int64_t> Client::lease_grant(std::int64_t ttl_s) {
  auto r = impl_->call("/v3/lease/grant", json::object{{"TTL", std::to_string(ttl_s)}});
  if (!r) return r.error();
  const std::int64_t id = int_field(*r, "ID");
  if (id == 0) return make_error(Errc::daemon_unreachable, "etcd " + endpoint() + ": lease grant without an ID");
  return id;
}

Result<void> Client::lease_keepalive(std::int64_t id) {
  // A streaming call in gRPC; through the gateway one request gets one answer and the stream ends.
  auto r = impl_->call("/v3/lease/keepalive", json::object{{"ID", std::to_string(id)}});
  if (!r) return r.error();
  const json::object& res = object_at(*r, "result");
  if (int_field(res, "TTL") <= 0)
    return make_error(Errc::no_such_package, "etcd " + endpoint() + ": lease " + std::to_string(id) + " expired");
  return {};
}

Result<void> Client::compact(std::int64_t revision) {
  auto r = impl_->call("/v3/kv/compaction", json::object{{"revision", std::to_string(revision)}, {"physical", true}});
  if (!r) return r.error();
  return {};
}

Result<Client::MemberStatus> Client::status() {
  auto r = impl_->call("/v3/maintenance/status", json::object{});
  if (!r) return r.error();
  return MemberStatus{uint_field(object_at(*r, "header"), "member_id"), uint_field(*r, "leader")};
}

Result<void> Client::watch(std::string_view prefix, std::int64_t start_revision) {
  Impl& m = *impl_;
  m.stream.reset();
  json::object create{{"key", b64(prefix)}, {"range_end", b64(prefix_end(prefix))}};
  if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);
  if (auto ok = m.send("/v3/watch", json::object{{"create_request", std::move(create)}}); !ok) return ok;
  m.stream.emplace();
  m.stream->body_limit(boost::none);
  m.sock->set_deadline(now_ms() + static_cast<std::uint64_t>(m.timeout.count()));
  error_code ec;
  http::read_header(*m.sock, m.buf, *m.stream, ec);
  m.sock->set_deadline(0);
  if (ec) return m.fail("/v3/watch: " + ec.message());
  if (m.stream->get().result() != http::status::ok)
    return m.fail("/v3/watch: HTTP " + std::to_string(m.stream->get().result_int()));
  m.messages.reset();
  return {};
}

Result<WatchResponse> Client::next(std::chrono::milliseconds idle) {
  Impl& m = *impl_;
  if (!m.stream || !m.sock) return make_error(Errc::daemon_unreachable, "etcd: no watch stream open");
  while (true) {
    // Messages already received: the gateway writes one JSON object per stream message.
    std::string& body = m.stream->get().body();
    std::size_t used = 0;
    while (used < body.size()) {
      json::error_code jec;
      used += m.messages.write_some(body.data() + used, body.size() - used, jec);
      if (jec) {
        body.clear();
        return m.fail("/v3/watch: bad JSON in the stream: " + jec.message());
      }
      if (!m.messages.done()) continue;
      json::value v = m.messages.release();
      m.messages.reset();
      body.erase(0, used);
      if (!v.is_object()) return m.fail("/v3/watch: a message that is not an object");
      const json::object& o = v.get_object();
      if (o.contains("error")) return m.fail("/v3/watch: " + json::serialize(o.at("error")));
      const json::object& res = object_at(o, "result");
      WatchResponse w;
      w.revision = int_field(object_at(res, "header"), "revision");
      w.compact_revision = int_field(res, "compact_revision");
      if (const json::value* c = res.if_contains("canceled"); c && c->is_bool()) w.canceled = c->get_bool();
      if (const json::value* evs = res.if_contains("events"); evs && evs->is_array()) {
        for (const json::value& e : evs->get_array()) {
          if (!e.is_object()) continue;
          Event ev;
          ev.is_delete = str_field(e.get_object(), "type") == "DELETE";
          ev.kv = parse_kv(object_at(e.get_object(), "kv"));
          w.events.push_back(std::move(ev));
        }
      }
      return w;
    }
    body.clear();
    if (m.stream->is_done()) return m.fail("/v3/watch: the stream ended");
    error_code ec;
    m.sock->set_deadline(idle.count() > 0 ? now_ms() + static_cast<std::uint64_t>(idle.count()) : 0);
    http::read_some(*m.sock, m.buf, *m.stream, ec);
    m.sock->set_deadline(0);
    if (ec == boost::asio::error::timed_out)
      return make_error(Errc::timed_out, "etcd " + m.endpoints[m.current].url + ": the watch brought nothing for " +
                                             std::to_string(idle.count()) + " ms");
    if (ec) return m.fail("/v3/watch: " + ec.message());
  }
}

}  // namespace pkgctx::etcd

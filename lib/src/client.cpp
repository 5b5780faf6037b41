#include "pkgctx/client.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace pkgctx {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

// Waits for `events` on fd until the deadline: 1 ready, 0 timed out, -1 error (errno).
int wait_for(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    return rc;
  }
}

}  // namespace

Result<Client> Client::connect(const std::string& path, std::chrono::milliseconds timeout) {
  const std::string what = "cannot connect to pkgctxd at " + path + ": ";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return make_error(Errc::daemon_unreachable,
                      what + "socket path must be 1.." + std::to_string(sizeof addr.sun_path - 1) + " bytes");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(Errc::daemon_unreachable, what + std::strerror(errno));
  // A Unix connect() blocks only while the listen backlog is full; SO_SNDTIMEO bounds that.
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(Errc::daemon_unreachable,
                      what + (err == EAGAIN || err == EINPROGRESS ? std::string("timed out (backlog full)")
                                                                  : std::string(std::strerror(err))));
  }
  return Client(fd, path, timeout);
}

Client::Client(Client&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)), timeout_(o.timeout_), in_(std::move(o.in_)) {
  o.fd_ = -1;
}

Client& Client::operator=(Client&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    timeout_ = o.timeout_;
    in_ = std::move(o.in_);
    o.fd_ = -1;
  }
  return *this;
}

Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Result<void> Client::send_raw(std::string_view bytes) {
  if (fd_ < 0) return make_error(Errc::daemon_unreachable, "connection to pkgctxd at " + path_ + " is closed");
  const auto deadline = Clock::now() + timeout_;
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      const int w = wait_for(fd_, POLLOUT, deadline);
      if (w == 0)
        return make_error(Errc::timed_out, "pkgctxd at " + path_ + " took no request bytes for " +
                                               std::to_string(timeout_.count()) + " ms");
      if (w < 0) return make_error(Errc::io_error, "cannot send to pkgctxd at " + path_ + ": " + std::strerror(errno));
      continue;
    }
    const int err = errno;
    if (err == EPIPE || err == ECONNRESET) {
      // The daemon may have answered before closing (too_many_clients): then that answer, which
      // receive() returns next, says more than the hang-up.
      if (has_buffered_answer()) return {};
      return make_error(Errc::daemon_unreachable, "pkgctxd at " + path_ + " closed the connection");
    }
    return make_error(Errc::io_error, "cannot send to pkgctxd at " + path_ + ": " + std::strerror(err));
  }
  return {};
}

bool Client::has_buffered_answer() {
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT)) > 0) in_.append(buf, static_cast<std::size_t>(n));
  return in_.find('\n') != std::string::npos;
}

Result<void> Client::send_line(std::string_view line) {
  std::string buf;
  buf.reserve(line.size() + 1);
  buf.append(line);
  buf += '\n';
  return send_raw(buf);
}

Result<void> Client::send(const boost::json::object& request) {
  std::string line = boost::json::serialize(request);
  line += '\n';
  return send_raw(line);
}

Result<std::string> Client::receive_line() {
  if (fd_ < 0) return make_error(Errc::daemon_unreachable, "connection to pkgctxd at " + path_ + " is closed");
  const auto deadline = Clock::now() + timeout_;
  std::size_t scanned = 0;
  while (true) {
    const std::size_t nl = in_.find('\n', scanned);
    if (nl != std::string::npos) {
      std::string line = in_.substr(0, nl);
      in_.erase(0, nl + 1);
      return line;
    }
    scanned = in_.size();
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      in_.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0)
      return make_error(Errc::daemon_unreachable, "pkgctxd at " + path_ + " closed the connection" +
                                                      (in_.empty() ? std::string() : " in the middle of an answer"));
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      const int w = wait_for(fd_, POLLIN, deadline);
      if (w == 0)
        return make_error(Errc::timed_out,
                          "no answer from pkgctxd at " + path_ + " within " + std::to_string(timeout_.count()) + " ms");
      if (w < 0) return make_error(Errc::io_error, "cannot receive from pkgctxd at " + path_ + ": " + std::strerror(errno));
      continue;
    }
    const int err = errno;
    if (err == ECONNRESET) return make_error(Errc::daemon_unreachable, "pkgctxd at " + path_ + " reset the connection");
    return make_error(Errc::io_error, "cannot receive from pkgctxd at " + path_ + ": " + std::strerror(err));
  }
}

Result<boost::json::object> Client::receive() {
  auto line = receive_line();
  if (!line) return line.error();
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(*line, ec);
  if (ec || !v.is_object())
    return make_error(Errc::io_error, "pkgctxd at " + path_ + " answered with something that is not a JSON object: " +
                                          line->substr(0, 120));
  return std::move(v.get_object());
}

Result<boost::json::object> Client::call(const boost::json::object& request) {
  if (auto s = send(request); !s) return s.error();
  return receive();
}

}  // namespace pkgctx

#include "pkgctx/daemon/server.hpp"

#include "pkgctx/daemon/log.hpp"
#include "pkgctx/segment.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

namespace pkgctx::daemon {

namespace {

constexpr std::uint64_t kListenerId = 1;
constexpr std::uint64_t kSignalId = 2;
constexpr std::uint64_t kTimerId = 3;
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kReadBudget = 256 * 1024;  // per client per wake-up: fairness
constexpr std::size_t kHighWater = 256 * 1024;

std::string errno_text(int err) { return std::strerror(err); }

Result<sockaddr_un> make_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return make_error(Errc::io_error, "socket path " + path + " is longer than " +
                                          std::to_string(sizeof addr.sun_path - 1) + " bytes");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

Peer peer_of(int fd) {
  Peer p;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
  }
  gid_t groups[64];
  socklen_t glen = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0) {
    p.groups.assign(groups, groups + glen / sizeof(gid_t));
  } else if (errno == ERANGE && glen > 0) {
    p.groups.resize(glen / sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p.groups.data(), &glen) != 0) p.groups.clear();
  }
  return p;
}

}  // namespace

// --- Listener -----------------------------------------------------------------------------------

Result<Listener> Listener::open(const std::string& path, mode_t mode, gid_t group) {
  auto addr = make_address(path);
  if (!addr) return addr.error();

  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::exists(parent, ec)) {
    std::filesystem::create_directories(parent, ec);
    if (ec) return make_error(Errc::io_error, "cannot create directory " + parent.string() + ": " + ec.message());
    ::chmod(parent.c_str(), 0755);
  }

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return make_error(Errc::io_error, path + " exists and is not a socket; refusing to replace it");
    // A socket file: live if someone accepts on it, stale (a daemon died) otherwise.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe >= 0) {
      const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
      const int err = errno;
      ::close(probe);
      if (rc == 0 || err == EAGAIN)
        return make_error(Errc::busy, "another process is serving " + path + " (a daemon for another segment?)");
    }
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return make_error(Errc::io_error, "cannot remove stale socket " + path + ": " + errno_text(errno));
  }

  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(Errc::io_error, "cannot create a Unix socket: " + errno_text(errno));
  // The umask decides the mode at bind(); set it so the file is never more open than asked.
  const mode_t old_umask = ::umask(static_cast<mode_t>(~mode & 0777));
  const int brc = ::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
  const int berr = errno;
  ::umask(old_umask);
  if (brc != 0) {
    ::close(fd);
    return make_error(berr == EACCES ? Errc::permission_denied : berr == EADDRINUSE ? Errc::busy : Errc::io_error,
                      "cannot bind " + path + ": " + errno_text(berr));
  }
  if (::chmod(path.c_str(), mode) != 0 ||
      (group != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), group) != 0)) {
    const int err = errno;
    ::unlink(path.c_str());
    ::close(fd);
    return make_error(Errc::permission_denied, "cannot set the mode or group of " + path + ": " + errno_text(err));
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    ::close(fd);
    return make_error(Errc::io_error, "cannot listen on " + path + ": " + errno_text(err));
  }
  ::lstat(path.c_str(), &st);
  return Listener(fd, path, st.st_dev, st.st_ino);
}

Listener::Listener(Listener&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)), dev_(o.dev_), ino_(o.ino_) {
  o.fd_ = -1;
}

Listener::~Listener() {
  if (fd_ < 0) return;
  // Remove the file only if it is still ours (not replaced by a successor).
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) ::unlink(path_.c_str());
  ::close(fd_);
}

// --- Server -------------------------------------------------------------------------------------

struct Server::Conn {
  std::uint64_t id = 0;
  int fd = -1;
  Peer peer;
  std::string in;              // unanswered input: at most one partial line plus one read
  std::size_t scanned = 0;     // bytes of `in` known to hold no '\n'
  bool discarding = false;     // skipping the rest of an over-long line
  std::string out;             // answers not yet sent, from out_off
  std::size_t out_off = 0;
  bool eof = false;            // the peer will send nothing more
  bool paused = false;         // too many unsent answers: input left unread
  std::uint32_t interest = 0;  // events registered with epoll
  std::uint64_t stalled_since_ns = 0;  // unsent answers and no progress since (0: none)

  std::size_t pending() const noexcept { return out.size() - out_off; }
};

Server::Server(Protocol& protocol, Listener& listener, ConnectionStats& connections, int signal_fd,
               const ServerLimits& limits, Hooks hooks)
    : protocol_(protocol),
      listener_(listener),
      connections_(connections),
      signal_fd_(signal_fd),
      hooks_(std::move(hooks)),
      limits_(limits) {}

Result<std::unique_ptr<Server>> Server::create(Protocol& protocol, Listener& listener, ConnectionStats& connections,
                                               int signal_fd, std::chrono::nanoseconds tick,
                                               const ServerLimits& limits, Hooks hooks) {
  std::unique_ptr<Server> server(new Server(protocol, listener, connections, signal_fd, limits, std::move(hooks)));
  if (auto ok = server->watch(tick); !ok) return ok.error();
  return server;
}

Server::~Server() {
  for (auto& [id, c] : conns_) {
    if (c->pending() > 0) flush(*c);  // best effort: answers already computed
    ::close(c->fd);
  }
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

Result<void> Server::watch(std::chrono::nanoseconds tick) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) return make_error(Errc::io_error, "cannot create epoll set: " + errno_text(errno));
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_fd_ < 0) return make_error(Errc::io_error, "cannot create timer: " + errno_text(errno));
  itimerspec its{};
  const auto ns = std::max<std::int64_t>(tick.count(), 1'000'000);
  its.it_interval.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  its.it_interval.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  its.it_value = its.it_interval;
  if (::timerfd_settime(timer_fd_, 0, &its, nullptr) != 0)
    return make_error(Errc::io_error, "cannot arm timer: " + errno_text(errno));
  const std::pair<int, std::uint64_t> fds[] = {{listener_.fd(), kListenerId}, {signal_fd_, kSignalId}, {timer_fd_, kTimerId}};
  for (auto [fd, id] : fds) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0)
      return make_error(Errc::io_error, "cannot watch descriptor: " + errno_text(errno));
  }
  return {};
}

void Server::set_limits(const ServerLimits& limits) {
  limits_ = limits;
  // New limits apply to waiting input at once (e.g. a raised high-water mark resumes readers).
  for (auto& [id, c] : conns_) update_interest(*c);
}

std::size_t Server::high_water() const noexcept { return std::min(kHighWater, limits_.max_output_bytes / 2); }

Result<int> Server::run() {
  epoll_event events[64];
  while (true) {
    const int n = ::epoll_wait(epoll_fd_, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(Errc::io_error, "epoll_wait: " + errno_text(errno));
    }
    for (int i = 0; i < n; ++i) {
      const std::uint64_t id = events[i].data.u64;
      if (id == kListenerId) {
        accept_all();
      } else if (id == kSignalId) {
        signalfd_siginfo si{};
        while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
          const int sig = static_cast<int>(si.ssi_signo);
          if (sig == SIGTERM || sig == SIGINT) return sig;
          if (sig == SIGHUP && hooks_.on_reload) {
            if (auto limits = hooks_.on_reload()) set_limits(*limits);
          }
        }
      } else if (id == kTimerId) {
        std::uint64_t expirations = 0;
        [[maybe_unused]] const ssize_t r = ::read(timer_fd_, &expirations, sizeof expirations);
        on_tick();
      } else {
        on_client(id, events[i].events);
      }
    }
  }
}

void Server::accept_all() {
  while (true) {
    const int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN) return;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop accepting until a client leaves or the next tick, instead of
        // spinning on a listener that stays readable.
        if (!listener_paused_) log::warning("Failed to accept a client: " + errno_text(errno) + "; pausing accepts");
        listener_paused_ = true;
        epoll_event ev{};
        ev.data.u64 = kListenerId;
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listener_.fd(), &ev);
        return;
      }
      log::warning("Failed to accept a client: " + errno_text(errno));
      return;
    }
    ++connections_.accepted;
    if (conns_.size() >= limits_.max_clients) {
      std::string answer;
      protocol_.refuse_client(answer, "the daemon serves at most " + std::to_string(limits_.max_clients) +
                                          " clients at once (max_clients); try again later");
      [[maybe_unused]] const ssize_t w = ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      const Peer p = peer_of(fd);
      ::close(fd);
      ++connections_.dropped;
      ++refused_since_log_;
      const std::uint64_t now = mono_now_ns();
      if (now - last_refusal_log_ns_ > 10'000'000'000ull) {
        log::warning("Refused client " + p.describe() + ": " + std::to_string(limits_.max_clients) +
                     " clients connected (max_clients); " + std::to_string(refused_since_log_) +
                     " refused since the last report");
        last_refusal_log_ns_ = now;
        refused_since_log_ = 0;
      }
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->fd = fd;
    c->peer = peer_of(fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->id;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      log::warning("Failed to watch client " + c->peer.describe() + ": " + errno_text(errno));
      ::close(fd);
      continue;
    }
    c->interest = EPOLLIN;
    log::debug("Accepted client " + c->peer.describe());
    conns_.emplace(c->id, std::move(c));
    connections_.clients = conns_.size();
  }
}

void Server::on_client(std::uint64_t id, std::uint32_t events) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;  // closed earlier in this batch
  Conn& c = *it->second;
  if (events & EPOLLOUT) {
    if (!flush(c)) return close_conn(id);
    if (c.paused && c.pending() <= high_water() / 2) {
      c.paused = false;
      process_lines(c);  // input already buffered
      if (!flush(c)) return close_conn(id);
    }
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    if (!c.paused && !c.eof) {
      read_input(c);
      if (c.fd < 0) return close_conn(id);
    } else if (events & (EPOLLHUP | EPOLLERR)) {
      // Paused or finished reading, and the peer is gone: nothing left to deliver to.
      if (!flush(c)) return close_conn(id);
    }
    if (!flush(c)) return close_conn(id);
  }
  if (c.pending() > limits_.max_output_bytes) {
    log::notice("Dropped client " + c.peer.describe() + ": " + std::to_string(c.pending()) +
                " bytes of answers unsent (max_output_bytes " + std::to_string(limits_.max_output_bytes) + ")");
    ++connections_.dropped;
    return close_conn(id);
  }
  // A paused connection whose answers drained outside an EPOLLOUT event (e.g. flushed on a
  // hang-up) resumes here; otherwise it would wait for an event it no longer asks for.
  if (c.paused && c.pending() <= high_water() / 2) {
    c.paused = false;
    process_lines(c);
    if (!flush(c)) return close_conn(id);
  }
  if ((events & (EPOLLHUP | EPOLLERR)) && c.pending() == 0 && (c.paused || c.eof)) return close_conn(id);
  if (c.eof && c.pending() == 0) return close_conn(id);
  update_interest(c);
}

void Server::read_input(Conn& c) {
  char buf[kReadChunk];
  std::size_t budget = kReadBudget;
  while (budget > 0 && !c.paused) {
    const ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n > 0) {
      budget -= std::min(budget, static_cast<std::size_t>(n));
      std::string_view data(buf, static_cast<std::size_t>(n));
      if (c.discarding) {
        const std::size_t nl = data.find('\n');
        if (nl == std::string_view::npos) continue;
        c.discarding = false;
        data.remove_prefix(nl + 1);
      }
      c.in.append(data);
      process_lines(c);
      continue;
    }
    if (n == 0) {
      c.eof = true;
      // A last request without its newline is still a request.
      if (!c.discarding && c.in.size() > 0) {
        c.in += '\n';
        process_lines(c);
      }
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return;
    // ECONNRESET and friends: the client is gone.
    ::close(c.fd);
    c.fd = -1;
    return;
  }
}

void Server::process_lines(Conn& c) {
  std::size_t start = 0;
  while (true) {
    if (c.pending() > high_water()) {
      c.paused = true;  // resume when the client has taken its answers
      break;
    }
    const std::size_t nl = c.in.find('\n', std::max(start, c.scanned));
    if (nl == std::string::npos) {
      if (c.in.size() - start > limits_.max_line_bytes) {
        protocol_.refuse_line(c.out, "request line longer than " + std::to_string(limits_.max_line_bytes) +
                                         " bytes (max_line_bytes); the rest of it is skipped");
        c.discarding = true;
        start = c.in.size();
      }
      c.scanned = c.in.size();
      break;
    }
    const std::string_view line(c.in.data() + start, nl - start);
    if (line.size() > limits_.max_line_bytes) {
      protocol_.refuse_line(c.out, "request line of " + std::to_string(line.size()) + " bytes is longer than " +
                                       std::to_string(limits_.max_line_bytes) + " (max_line_bytes)");
    } else {
      protocol_.handle(line, c.peer, c.out);
    }
    start = nl + 1;
  }
  c.in.erase(0, start);
  c.scanned = c.scanned >= start ? c.scanned - start : 0;
  if (c.in.empty() && c.in.capacity() > 4 * kReadChunk) c.in.shrink_to_fit();
}

bool Server::flush(Conn& c) {
  if (c.fd < 0) return false;
  while (c.pending() > 0) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out_off += static_cast<std::size_t>(n);
      c.stalled_since_ns = 0;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    return false;  // EPIPE, ECONNRESET: the client is gone
  }
  if (c.pending() == 0) {
    c.out.clear();
    c.out_off = 0;
    if (c.out.capacity() > 4 * kHighWater) c.out.shrink_to_fit();
  } else {
    if (c.stalled_since_ns == 0) c.stalled_since_ns = mono_now_ns();
    if (c.out_off > c.out.size() / 2) {  // keep the buffer from growing at the front
      c.out.erase(0, c.out_off);
      c.out_off = 0;
    }
  }
  return true;
}

void Server::update_interest(Conn& c) {
  if (c.fd < 0) return;
  std::uint32_t want = 0;
  if (!c.paused && !c.eof) want |= EPOLLIN;
  if (c.pending() > 0) want |= EPOLLOUT;
  if (want == c.interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev) == 0) c.interest = want;
}

void Server::close_conn(std::uint64_t id, const char* why) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  if (why) log::debug("Closing client " + c.peer.describe() + ": " + why);
  if (c.fd >= 0) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    ::close(c.fd);
  }
  conns_.erase(it);
  connections_.clients = conns_.size();
  resume_listener();
}

void Server::resume_listener() {
  if (!listener_paused_) return;
  listener_paused_ = false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenerId;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listener_.fd(), &ev);
}

void Server::on_tick() {
  if (hooks_.on_tick) hooks_.on_tick();
  const std::uint64_t now = mono_now_ns();
  const auto timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(limits_.send_timeout).count());
  std::vector<std::uint64_t> stalled;
  for (auto& [id, c] : conns_) {
    if (c->pending() > 0 && c->stalled_since_ns != 0 && now - c->stalled_since_ns > timeout_ns) stalled.push_back(id);
  }
  for (std::uint64_t id : stalled) {
    Conn& c = *conns_.at(id);
    log::notice("Dropped client " + c.peer.describe() + ": took none of its " + std::to_string(c.pending()) +
                " bytes of answers for " + std::to_string(limits_.send_timeout.count()) + " ms (send_timeout_ms)");
    ++connections_.dropped;
    close_conn(id);
  }
  resume_listener();  // paused accepts are retried at least once a tick
}

}  // namespace pkgctx::daemon

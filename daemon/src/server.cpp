#include "pkgctx/daemon/server.hpp"

#include "pkgctx/daemon/log.hpp"
#include "pkgctx/daemon/registry.hpp"
#include "pkgctx/segment.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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
constexpr std::uint64_t kPostId = 4;
constexpr std::uint64_t kPidfdBit = 1ull << 63;  // epoll id of a registered client's pidfd: bit | conn id
constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::size_t kReadBudget = 256 * 1024;  // per client per wake-up: fairness
constexpr std::size_t kHighWater = 256 * 1024;
// Readers' share of one wake-up, after the writers: small against the 50 ms a write may wait.
constexpr std::uint64_t kTurnBudgetNs = 5'000'000;
constexpr std::uint32_t kDumpSlice = 512;  // slots read per dump step (well under a millisecond)

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

namespace {

std::string octal(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

// The socket's directory, and each one above it, must be one where nobody but root and the
// daemon's user can create, rename or remove entries: otherwise a file swapped in at the
// socket's name (or a directory swapped in above it) could be what a path-based call acts on. A
// sticky directory (/tmp) qualifies: others may add entries but not touch ours, and bind() never
// follows or replaces what is already there.
Result<void> check_one_directory(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    return make_error(Errc::io_error, "cannot inspect directory " + dir + ": " + errno_text(errno));
  if (!S_ISDIR(st.st_mode)) return make_error(Errc::io_error, dir + " is not a directory");
  const bool foreign_owner = st.st_uid != 0 && st.st_uid != ::geteuid();
  const bool open_to_others = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0;
  if (foreign_owner || open_to_others)
    return make_error(Errc::permission_denied,
                      "socket directory " + dir + " (owner uid " + std::to_string(st.st_uid) + ", gid " +
                          std::to_string(st.st_gid) + ", mode " + octal(st.st_mode) + ") " +
                          (foreign_owner ? "belongs to another user" : "is writable by others") +
                          "; refusing to create the control socket there (use a directory only root or the "
                          "daemon's user can write, such as /run/pkgctx)");
  return {};
}

Result<void> check_directory(const std::string& dir) {
  if (auto ok = check_one_directory(dir); !ok) return ok;
  std::error_code ec;
  std::filesystem::path p = std::filesystem::canonical(dir, ec);
  if (ec) return make_error(Errc::io_error, "cannot resolve directory " + dir + ": " + ec.message());
  while (p.has_relative_path()) {
    p = p.parent_path();
    if (auto ok = check_one_directory(p.string()); !ok) return ok;
  }
  return {};
}

// Binds `fd` to `addr` so that the new file has `mode` (by the umask) and `group` (by the
// effective gid, unless the directory's set-gid bit already gives it that group). Nothing is
// changed by path afterwards.
int bind_as(int fd, const sockaddr_un& addr, mode_t mode, gid_t group, const std::string& dir, std::string& why) {
  bool switch_gid = false;
  if (group != static_cast<gid_t>(-1) && group != ::getegid()) {
    struct stat st {};
    switch_gid = !(::stat(dir.c_str(), &st) == 0 && (st.st_mode & S_ISGID) && st.st_gid == group);
  }
  const gid_t old_gid = ::getegid();
  if (switch_gid && ::setegid(group) != 0) {
    const int err = errno;
    why = "cannot create it with group " + std::to_string(group) + " (setegid: " + errno_text(err) +
          "); run the daemon as root, or give " + dir + " that group and the set-gid bit (chmod g+s)";
    return err;
  }
  // The umask decides the mode at bind(); set it so the file is never more open than asked.
  const mode_t old_umask = ::umask(static_cast<mode_t>(~mode & 0777));
  const int brc = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int berr = brc == 0 ? 0 : errno;
  ::umask(old_umask);
  if (switch_gid && ::setegid(old_gid) != 0) {
    // Unreachable in practice (the saved gid allows it); the process must not go on as `group`.
    log::error("Failed to restore effective gid " + std::to_string(old_gid) + ": " + errno_text(errno));
    std::abort();
  }
  if (berr != 0) why = "cannot bind: " + errno_text(berr);
  return berr;
}

}  // namespace

Result<Listener> Listener::open(const std::string& path, mode_t mode, gid_t group) {
  auto addr = make_address(path);
  if (!addr) return addr.error();

  const std::filesystem::path parent_path = std::filesystem::path(path).parent_path();
  const std::string parent = parent_path.empty() ? std::string(".") : parent_path.string();
  std::error_code ec;
  if (!std::filesystem::exists(parent, ec)) {
    // New directories get 0755 from the umask, not from a chmod by path.
    const mode_t old_umask = ::umask(022);
    std::filesystem::create_directories(parent, ec);
    ::umask(old_umask);
    if (ec) return make_error(Errc::io_error, "cannot create directory " + parent + ": " + ec.message());
  }
  if (auto ok = check_directory(parent); !ok) return ok.error();

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
  std::string why;
  if (const int berr = bind_as(fd, *addr, mode, group, parent, why); berr != 0) {
    ::close(fd);
    return make_error(berr == EACCES || berr == EPERM ? Errc::permission_denied
                      : berr == EADDRINUSE            ? Errc::busy
                                                      : Errc::io_error,
                      path + ": " + why);
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    ::close(fd);
    return make_error(Errc::io_error, "cannot listen on " + path + ": " + errno_text(err));
  }
  // The file's identity, so the destructor removes it only while it is still this one (the
  // directory check above means nobody else can have swapped it in between).
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
  bool writer = false;         // the write allow-list admitted the peer when it connected
  std::string in;              // unanswered input: at most one partial line plus one read
  std::size_t scanned = 0;     // bytes of `in` known to hold no '\n'
  bool discarding = false;     // skipping the rest of an over-long line
  DumpCursor dump;             // a dump answer still being written
  std::string out;             // answers not yet sent, from out_off
  std::size_t out_off = 0;
  bool eof = false;            // the peer will send nothing more
  bool paused = false;         // too many unsent answers: input left unread
  bool queued = false;         // in the backlog: requests read, turn budget spent
  std::uint32_t interest = 0;  // events registered with epoll
  std::uint64_t stalled_since_ns = 0;  // unsent answers and no progress since (0: none)
  std::uint64_t last_request_ns = 0;   // accept, or the last complete request
  bool registered = false;     // a worker's registration: carries only task-ended bytes
  bool waiting = false;        // a drain's answer is pending: later requests wait behind it
  int passed_fd = -1;          // a descriptor received with the input not yet answered

  std::size_t pending() const noexcept { return out.size() - out_off; }
  bool busy() const noexcept { return pending() > 0 || dump.active || queued || waiting; }
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
  if (post_fd_ >= 0) ::close(post_fd_);
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
  post_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (post_fd_ < 0) return make_error(Errc::io_error, "cannot create eventfd: " + errno_text(errno));
  const std::pair<int, std::uint64_t> fds[] = {
      {listener_.fd(), kListenerId}, {signal_fd_, kSignalId}, {timer_fd_, kTimerId}, {post_fd_, kPostId}};
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
  if (registry_) registry_->set_max_clients(limits_.max_registered);
  // New limits apply to waiting input at once (e.g. a raised high-water mark resumes readers).
  for (auto& [id, c] : conns_) update_interest(*c);
}

std::size_t Server::high_water() const noexcept { return std::min(kHighWater, limits_.max_output_bytes / 2); }

std::size_t Server::line_limit(const Conn& c) const noexcept {
  return c.writer ? limits_.max_line_bytes : std::min(limits_.max_line_bytes, limits_.max_read_line_bytes);
}

bool Server::over_budget(std::uint64_t now) const noexcept { return now > turn_deadline_ns_; }

Result<int> Server::run() {
  epoll_event events[64];
  while (true) {
    // Work left in the backlog: look for new events without sleeping, then go on with it.
    const int n = ::epoll_wait(epoll_fd_, events, 64, backlog_.empty() ? drain_wait_ms() : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(Errc::io_error, "epoll_wait: " + errno_text(errno));
    }
    turn_deadline_ns_ = mono_now_ns() + kTurnBudgetNs;
    // Signals, the timer and new connections first, whatever the budget. Their log lines go
    // out at once: a reload's result must be in the log before it notifies READY=1.
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
      } else if (id & kPidfdBit) {
        close_conn(id & ~kPidfdBit, "its process exited");  // before its socket's EOF, if ever
      } else if (id == kTimerId) {
        std::uint64_t expirations = 0;
        [[maybe_unused]] const ssize_t r = ::read(timer_fd_, &expirations, sizeof expirations);
        on_tick();
      } else if (id == kPostId) {
        run_posted();
      }
    }
    // Then writers, whatever the budget; then readers while it lasts (level-triggered: a reader
    // skipped now is reported again by the next epoll_wait); then the backlog.
    log::Batch log_batch;  // the clients' log lines (audit lines of pipelined writes) in one write
    for (const bool writers : {true, false}) {
      for (int i = 0; i < n; ++i) {
        const std::uint64_t id = events[i].data.u64;
        auto it = conns_.find(id);
        if (it == conns_.end()) continue;  // not a client, or closed earlier in this batch
        if (it->second->writer != writers || (!writers && over_budget())) continue;
        on_client(*it->second, events[i].events);
      }
    }
    serve_backlog();
    if (registry_) {
      if (const std::uint64_t d = registry_->next_deadline_ns(); d != 0 && mono_now_ns() >= d) registry_->tick();
      deliver_answers();
    }
  }
}

void Server::post(std::function<void()> task) {
  {
    std::lock_guard lock(post_mu_);
    posted_.push_back(std::move(task));
  }
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(post_fd_, &one, sizeof one);
}

void Server::run_posted() {
  std::uint64_t count = 0;
  [[maybe_unused]] const ssize_t r = ::read(post_fd_, &count, sizeof count);
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(post_mu_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) {
    const std::uint64_t wakes = registry_ ? registry_->wakes() : 0;
    task();
    if (registry_) registry_->retire_woken(wakes);
  }
}

void Server::set_registry(Registry* registry) noexcept {
  registry_ = registry;
  if (registry_) registry_->set_max_clients(limits_.max_registered);
}

int Server::drain_wait_ms() const {
  const std::uint64_t d = registry_ ? registry_->next_deadline_ns() : 0;
  if (d == 0) return -1;
  const std::uint64_t now = mono_now_ns();
  return d <= now ? 0 : static_cast<int>(std::min<std::uint64_t>((d - now + 999'999) / 1'000'000, 1'000'000));
}

void Server::deliver_answers() {
  // Delivering may end a drain's wait only; a connection gone meanwhile was forgotten already.
  // Requests served behind a delivered answer may start drains that answer at once: repeat.
  for (auto batch = registry_->take_answers(); !batch.empty(); batch = registry_->take_answers()) {
    for (auto& [id, line] : batch) {
      auto it = conns_.find(id);
      if (it == conns_.end()) continue;
      Conn& c = *it->second;
      c.out += line;
      c.waiting = false;
      process_lines(c);  // requests that arrived behind the drain
      if (!flush(c) || !resume(c)) {
        close_conn(id);
        continue;
      }
      update_interest(c);
    }
  }
}

void Server::on_registered(Conn& c) {
  c.registered = true;
  ++registered_;
  if (!c.writer) --readers_;  // the slot it took to register is free again
  const int pidfd = registry_ ? registry_->pidfd(c.id) : -1;
  if (pidfd >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kPidfdBit | c.id;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, pidfd, &ev) != 0)
      log::warning("Failed to watch the process of " + c.peer.describe() + ": " + errno_text(errno));
  }
}

// read() that also takes a descriptor passed with the bytes (SCM_RIGHTS, close-on-exec).
ssize_t Server::receive(Conn& c, char* buf, std::size_t size) {
  iovec iov{buf, size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(c.fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      if (c.passed_fd < 0 && !c.registered) {
        c.passed_fd = fd;  // the register request's page; any other is closed
      } else {
        ::close(fd);
      }
    }
  }
  return n;
}

void Server::serve_backlog() {
  // Each queued connection once per turn, in order, while the budget lasts.
  for (std::size_t left = backlog_.size(); left > 0 && !backlog_.empty() && !over_budget(); --left) {
    const std::uint64_t id = backlog_.front();
    backlog_.pop_front();
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Conn& c = *it->second;
    c.queued = false;
    process_lines(c);  // may queue it again
    if (!flush(c) || !resume(c)) {
      close_conn(id);
      continue;
    }
    if (c.eof && !c.busy()) {
      close_conn(id);
      continue;
    }
    update_interest(c);
  }
}

void Server::refuse(int fd, const Peer& peer, const std::string& why) {
  std::string answer;
  protocol_.refuse_client(answer, why);
  // The answer first, then the close: the client reads too_many_clients, not a bare hang-up.
  [[maybe_unused]] const ssize_t w = ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::close(fd);
  ++connections_.dropped;
  ++refused_since_log_;
  const std::uint64_t now = mono_now_ns();
  if (now - last_refusal_log_ns_ > 10'000'000'000ull) {
    log::warning("Refused client " + peer.describe() + ": " + why + "; " + std::to_string(refused_since_log_) +
                 " refused since the last report");
    last_refusal_log_ns_ = now;
    refused_since_log_ = 0;
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
    const Peer peer = peer_of(fd);
    const bool writer = protocol_.options().allow.allows(peer);
    // At most max_clients - 1 reserved: readers (workers, pkgctl reads) always keep one slot.
    const std::uint32_t reserved = std::min(limits_.writer_slots, limits_.max_clients - 1);
    if (conns_.size() - registered_ >= limits_.max_clients) {
      refuse(fd, peer, "too many clients: the daemon serves at most " + std::to_string(limits_.max_clients) +
                           " clients at once (max_clients); try again later");
      continue;
    }
    if (!writer && readers_ >= limits_.max_clients - reserved) {
      refuse(fd, peer, "too many clients: the daemon serves at most " + std::to_string(limits_.max_clients - reserved) +
                           " clients off the write allow-list at once (max_clients " +
                           std::to_string(limits_.max_clients) + ", of which writer_slots " +
                           std::to_string(reserved) + " are kept for writers); try again later");
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->fd = fd;
    c->peer = peer;
    c->writer = writer;
    c->last_request_ns = mono_now_ns();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->id;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      log::warning("Failed to watch client " + c->peer.describe() + ": " + errno_text(errno));
      ::close(fd);
      continue;
    }
    c->interest = EPOLLIN;
    log::debug("Accepted client " + c->peer.describe() + (writer ? " (writer)" : ""));
    if (!writer) ++readers_;
    conns_.emplace(c->id, std::move(c));
    connections_.clients = conns_.size();
  }
}

void Server::on_client(Conn& c, std::uint32_t events) {
  const std::uint64_t id = c.id;
  if (events & EPOLLOUT) {
    if (!flush(c) || !resume(c)) return close_conn(id);
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    if (!c.paused && !c.eof && !c.queued && !c.waiting) {
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
  if (!resume(c)) return close_conn(id);
  if ((events & (EPOLLHUP | EPOLLERR)) && c.pending() == 0 && (c.paused || c.eof || c.waiting)) return close_conn(id);
  if (c.eof && !c.busy()) return close_conn(id);
  update_interest(c);
}

void Server::read_input(Conn& c) {
  char buf[kReadChunk];
  std::size_t budget = kReadBudget;
  while (budget > 0 && !c.paused && !c.queued && !c.dump.active && !c.waiting) {
    // Never more than the rest of one line: a partial line stays within the peer's line limit.
    const std::size_t limit = line_limit(c);
    const std::size_t room = c.discarding || c.in.size() >= limit ? sizeof buf : limit + 1 - c.in.size();
    const std::size_t want = std::min(sizeof buf, room);
    const ssize_t n = receive(c, buf, want);
    if (n > 0 && c.registered) {
      // Task-ended bytes: their content does not matter, only that the worker wants a re-check.
      if (registry_) registry_->ping(c.id, static_cast<std::size_t>(n));
      continue;
    }
    if (n > 0) {
      // A short read took all there was: the next read would only say EAGAIN (a syscall on every
      // request). The socket is level-triggered in epoll, so whatever comes later is reported.
      const bool drained = static_cast<std::size_t>(n) < want;
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
      if (drained) return;
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
  const std::size_t limit = line_limit(c);
  while (true) {
    if (c.waiting) break;  // answered by deliver_answers(), then the rest follows in order
    if (c.registered) {  // bytes after the register request are task-ended pings
      if (start < c.in.size() && registry_) registry_->ping(c.id, c.in.size() - start);
      start = c.in.size();
      break;
    }
    if (c.pending() > high_water()) {
      c.paused = true;  // resume when the client has taken its answers
      break;
    }
    // The next line's end (a dump in progress comes first).
    const std::size_t nl = c.dump.active ? std::string::npos : c.in.find('\n', std::max(start, c.scanned));
    const bool has_work = c.dump.active || nl != std::string::npos;
    // One clock read per request: the budget check, and when the request was taken up.
    const std::uint64_t now = has_work ? mono_now_ns() : 0;
    if (has_work && over_budget(now)) {
      // This turn's budget is spent: the rest waits in the backlog (writers are served first).
      if (!c.queued) backlog_.push_back(c.id);
      c.queued = true;
      break;
    }
    if (c.dump.active) {
      if (!protocol_.continue_dump(c.dump, c.out, kDumpSlice)) {
        log::error("Failed to write a dump for client " + c.peer.describe() + ": out of memory; closing it");
        c.eof = true;  // nothing more will be read or answered
        c.in.clear();
        start = 0;
        break;
      }
      continue;
    }
    if (nl == std::string::npos) {
      if (c.in.size() - start > limit) {
        protocol_.refuse_line(c.out, "request line longer than " + std::to_string(limit) + " bytes (" +
                                         (c.writer ? "max_line_bytes" : "max_read_line_bytes, for peers off the "
                                                                        "write allow-list") +
                                         "); the rest of it is skipped");
        c.discarding = true;
        start = c.in.size();
      }
      c.scanned = c.in.size();
      break;
    }
    const std::string_view line(c.in.data() + start, nl - start);
    if (line.size() > limit) {
      protocol_.refuse_line(c.out, "request line of " + std::to_string(line.size()) + " bytes is longer than " +
                                       std::to_string(limit) + (c.writer ? " (max_line_bytes)" : " (max_read_line_bytes)"));
    } else {
      Session session{c.id, std::exchange(c.passed_fd, -1)};
      const std::uint64_t wakes = registry_ ? registry_->wakes() : 0;
      protocol_.handle(line, c.peer, c.out, &c.dump, &session);
      // The counted waits a write of this request woke are retired before its answer goes out
      // (their workers withdraw them without a byte either way); one load when none woke.
      if (registry_) registry_->retire_woken(wakes);
      if (session.received_fd >= 0) ::close(session.received_fd);  // passed with another request
      if (session.registered) on_registered(c);
      c.waiting = session.waiting;
    }
    c.last_request_ns = now;
    start = nl + 1;
  }
  c.in.erase(0, start);
  c.scanned = c.scanned >= start ? c.scanned - start : 0;
  // Give back what a long line took once it is answered or skipped.
  if (c.in.capacity() > kReadChunk && c.in.size() < c.in.capacity() / 4) c.in.shrink_to_fit();
}
bool Server::resume(Conn& c) {
  // Paused, and the client took its answers: go on with its buffered requests or its dump. A
  // fast reader may take each batch at once; the loop ends when it pauses again with answers
  // still unsent, runs out of work, or is queued for the next turn.
  while (c.paused && c.pending() <= high_water() / 2) {
    c.paused = false;
    process_lines(c);
    if (!flush(c)) return false;
  }
  return true;
}

bool Server::flush(Conn& c) {
  if (c.fd < 0) return false;
  log::flush();  // a request's log line goes out before its answer
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
  if (!c.paused && !c.eof && !c.queued && !c.dump.active && !c.waiting) want |= EPOLLIN;
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
  if (c.passed_fd >= 0) ::close(c.passed_fd);
  if (c.registered) {
    --registered_;
    if (registry_) registry_->remove(id);  // closes the pidfd (epoll forgets it)
  } else {
    if (!c.writer) --readers_;
    if (c.waiting && registry_) registry_->forget_drains(id);
  }
  conns_.erase(it);  // a backlog entry for it is skipped
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
  if (registry_) registry_->tick();
  const std::uint64_t now = mono_now_ns();
  const auto timeout_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(limits_.send_timeout).count());
  const auto idle_ns = static_cast<std::uint64_t>(std::chrono::nanoseconds(limits_.idle_timeout).count());
  std::vector<std::uint64_t> stalled, idle;
  for (auto& [id, c] : conns_) {
    if (c->pending() > 0 && c->stalled_since_ns != 0 && now - c->stalled_since_ns > timeout_ns) stalled.push_back(id);
    // Idle: nothing owed to it and no complete request for idle_timeout (a trickled partial
    // line does not count, so a slot cannot be held by a byte a minute).
    else if (!c->busy() && !c->registered && now - c->last_request_ns > idle_ns) idle.push_back(id);
  }
  for (std::uint64_t id : idle) {
    log::debug("Closing client " + conns_.at(id)->peer.describe() + ": no request for " +
               std::to_string(limits_.idle_timeout.count()) + " ms (idle_timeout_ms)");
    close_conn(id);
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

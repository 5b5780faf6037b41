// pkgctx/daemon/server.hpp — the control socket and the daemon's one event loop.
//
// One thread, one epoll set: the listening socket, a signalfd (SIGTERM, SIGINT, SIGHUP), a
// timerfd (heartbeat/watchdog tick) and every client, all non-blocking and level-triggered.
// Raw epoll rather than Boost.Asio: the loop is ~300 lines, every syscall is visible, per-client
// backpressure is a matter of toggling EPOLLIN, and the daemon pulls in no extra runtime.
//
// Per client: an input buffer holding at most one partial line (bounded by max_line_bytes for
// peers on the write allow-list, by the much smaller max_read_line_bytes for everyone else: a
// reader's requests are short, so a hundred readers cannot make the daemon hold a hundred
// megabyte lines) and an output buffer. Complete lines are answered in order; answers are batched into one
// send() per readiness. Backpressure: while a client has more than a high-water mark of
// unsent answers its further requests are left unread (in the kernel), so a pipelining client
// that reads late costs bounded memory. A client is dropped when its unsent answers pass
// max_output_bytes, or when it has unsent answers and has taken none for send_timeout_ms.
// A slow, stalled or half-open client therefore never blocks anyone else. A client that sends
// no complete request for idle_timeout_ms is closed.
//
// Writers first (DESIGN §4.1 "readers cannot starve writers"): max_clients counts every
// connection, but the last writer_slots of them only admit peers the write allow-list admits
// (decided once, at accept, from SO_PEERCRED). Each wake-up serves the writers' connections
// first, then readers until a small time budget is spent; requests already read but not yet
// answered wait in a backlog served on the next turns, and a dump is written a slice of slots
// per turn. So a flood of reads delays a write by about one budget, not by the flood.
//
// Other threads (the etcd follower) hand work to the loop with post(): a queue under a mutex and
// an eventfd in the epoll set, so the registry and the drains stay the loop's alone.
//
// Durability: an answer is produced only after the store call returned, and the store writes
// the shared segment synchronously; nothing is buffered between the store and the segment.
#pragma once

#include "pkgctx/daemon/protocol.hpp"
#include "pkgctx/error.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <sys/types.h>
#include <unordered_map>
#include <vector>

namespace pkgctx::daemon {

class Registry;

// The listening control socket. Creates the parent directory if missing (0755), refuses a
// parent directory that anyone but root and the daemon's user can write (a symlink swapped in
// there could redirect the socket file), replaces a stale socket file (nobody accepting) and
// refuses a live one. The file gets its mode from the umask at bind() and its group from the
// effective gid at bind(): nothing is changed by path afterwards. Removes its file when
// destroyed, if the file is still this socket's.
class Listener {
 public:
  // Errors: io_error / permission_denied / busy (another process is listening there).
  static Result<Listener> open(const std::string& path, mode_t mode, gid_t group);
  Listener(Listener&& o) noexcept;
  Listener& operator=(Listener&&) = delete;
  Listener(const Listener&) = delete;
  ~Listener();
  int fd() const noexcept { return fd_; }
  const std::string& path() const noexcept { return path_; }

 private:
  Listener(int fd, std::string path, dev_t dev, ino_t ino) : fd_(fd), path_(std::move(path)), dev_(dev), ino_(ino) {}
  int fd_ = -1;
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// The limits the server enforces; all of them may change on SIGHUP.
struct ServerLimits {
  std::size_t max_line_bytes = 2u << 20;       // peers on the write allow-list
  std::size_t max_read_line_bytes = 16u << 10; // everyone else (min with max_line_bytes)
  std::size_t max_output_bytes = 64u << 20;
  std::uint32_t max_clients = 256;
  std::uint32_t writer_slots = 16;             // of max_clients, only for allow-listed writers
                                               // (at most max_clients - 1: readers keep one)
  std::chrono::milliseconds send_timeout{30000};
  std::chrono::milliseconds idle_timeout{60000};  // no complete request for this long: closed
  std::uint32_t max_registered = 4096;         // registered workers (see Registry)
};

class Server {
 public:
  struct Hooks {
    std::function<void()> on_tick;                        // every tick: heartbeat, repair, watchdog
    std::function<std::optional<ServerLimits>()> on_reload;  // SIGHUP; returns new limits, if any
  };

  // A server ready to run: its epoll set watches `listener`, `signal_fd` (a signalfd for SIGTERM,
  // SIGINT and SIGHUP, owned by the caller) and a timer firing every `tick`. It answers requests
  // with `protocol` and counts connections in `connections`. Errors: io_error.
  static Result<std::unique_ptr<Server>> create(Protocol& protocol, Listener& listener, ConnectionStats& connections,
                                                int signal_fd, std::chrono::nanoseconds tick,
                                                const ServerLimits& limits, Hooks hooks);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const ServerLimits& limits() const noexcept { return limits_; }
  // Workers' registrations and drains (register, drain ops): the server watches the registered
  // clients' pidfds, feeds their pings, and delivers drain answers. Set before run().
  void set_registry(Registry* registry) noexcept;

  // Serves until SIGTERM or SIGINT; returns that signal's number. Errors: io_error (epoll).
  Result<int> run();

  // Runs `task` on the loop's thread, soon (any thread may call it). Tasks posted after run()
  // returned never run.
  void post(std::function<void()> task);

 private:
  struct Conn;
  Server(Protocol& protocol, Listener& listener, ConnectionStats& connections, int signal_fd,
         const ServerLimits& limits, Hooks hooks);
  Result<void> watch(std::chrono::nanoseconds tick);
  void set_limits(const ServerLimits& limits);
  void accept_all();
  void on_client(Conn& c, std::uint32_t events);
  void serve_backlog();         // requests read earlier and left for this turn, until the budget
  bool over_budget(std::uint64_t now = mono_now_ns()) const noexcept;  // this turn's time is spent
  void read_input(Conn& c);
  void process_lines(Conn& c);
  std::size_t line_limit(const Conn& c) const noexcept;
  void refuse(int fd, const Peer& peer, const std::string& why);
  bool flush(Conn& c);          // false: the connection is gone
  bool resume(Conn& c);         // a paused connection whose answers drained; false: gone
  void update_interest(Conn& c);
  void close_conn(std::uint64_t id, const char* why_for_log = nullptr);
  void resume_listener();       // accepts again if accept_all() paused them (out of descriptors)
  void on_tick();
  std::size_t high_water() const noexcept;
  int drain_wait_ms() const;            // epoll timeout until the next drain deadline (-1: none)
  void deliver_answers();               // drain answers the registry has ready
  void on_registered(Conn& c);          // a register request succeeded on `c`
  void run_posted();                    // the tasks other threads posted
  ssize_t receive(Conn& c, char* buf, std::size_t size);

  Protocol& protocol_;
  Listener& listener_;
  ConnectionStats& connections_;
  int signal_fd_;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int post_fd_ = -1;  // eventfd: readable while posted_ holds tasks
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  Hooks hooks_;
  ServerLimits limits_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> conns_;
  std::uint32_t readers_ = 0;   // connections of peers off the write allow-list
  std::uint32_t registered_ = 0;  // registration connections (not counted against max_clients)
  Registry* registry_ = nullptr;
  std::deque<std::uint64_t> backlog_;  // connections with requests read but not yet answered
  std::uint64_t turn_deadline_ns_ = 0;
  std::uint64_t next_id_ = 16;  // ids below are the listener, signals and timer
  bool listener_paused_ = false;
  std::uint64_t last_refusal_log_ns_ = 0;
  std::uint64_t refused_since_log_ = 0;
};

}  // namespace pkgctx::daemon

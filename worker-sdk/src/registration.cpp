#include "registration.hpp"

#include "pkgctx/futex.hpp"
#include "waitv.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <new>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <system_error>
#include <unistd.h>

namespace pkgctx::detail {

namespace {

constexpr int kRetryMs = 200;         // reconnect attempts while the daemon is away
constexpr int kAnswerTimeoutMs = 5000;  // the register round trip

std::uint64_t coarse_now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // vDSO: no syscall
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

int new_socket() noexcept { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); }

// Cleared for good when the kernel refuses futex_waitv: counted waits then re-check in slices.
std::atomic<bool> have_waitv{true};

// Sleeps on `wake` (== w) and the registration's state word (== st) at once, at most `left`.
void sleep_two(const std::atomic<std::uint32_t>* wake, std::uint32_t w, const std::atomic<std::uint32_t>* state,
               std::uint32_t st, std::chrono::nanoseconds left) noexcept {
  if (have_waitv.load(std::memory_order_relaxed)) {
    WaitV v[2] = {waitv_entry(wake, w), waitv_entry(state, st)};
    const timespec deadline = mono_deadline(left.count());
    if (!waitv_unusable(futex_waitv(v, 2, &deadline))) return;
    have_waitv.store(false, std::memory_order_relaxed);
  }
  futex::wait(wake, w, std::min<std::chrono::nanoseconds>(left, kWaitSlice));
}

// Claims a free bit of `bits` (words of 64) and raises `used` past it; -1 when none is free.
template <std::size_t N>
int claim_bit(std::atomic<std::uint64_t> (&bits)[N], std::atomic<std::uint32_t>& used) noexcept {
  for (std::uint32_t w = 0; w < N; ++w) {
    std::uint64_t v = bits[w].load(std::memory_order_relaxed);
    while (~v != 0) {
      const int bit = __builtin_ctzll(~v);
      if (bits[w].compare_exchange_weak(v, v | (1ull << bit), std::memory_order_acquire, std::memory_order_relaxed)) {
        const std::uint32_t i = w * 64 + static_cast<std::uint32_t>(bit);
        // The daemon reads no record at or past `used`: raise it before the record is written.
        std::uint32_t u = used.load(std::memory_order_relaxed);
        while (u <= i && !used.compare_exchange_weak(u, i + 1, std::memory_order_release)) {
        }
        return static_cast<int>(i);
      }
    }
  }
  return -1;
}

}  // namespace

Result<std::shared_ptr<Registration>> Registration::start(std::string socket, bool connect_now) {
  auto r = std::shared_ptr<Registration>(new Registration());
  r->socket_ = std::move(socket);
  r->memfd_ = ::memfd_create("pkgctx-leases", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (r->memfd_ < 0) return make_error(Errc::io_error, std::string("memfd_create: ") + std::strerror(errno));
  if (::ftruncate(r->memfd_, sizeof(lease::Page)) != 0 ||
      ::fcntl(r->memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return make_error(Errc::io_error, std::string("sealing the lease page: ") + std::strerror(errno));
  void* p = ::mmap(nullptr, sizeof(lease::Page), PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd_, 0);
  if (p == MAP_FAILED) return make_error(Errc::io_error, std::string("mapping the lease page: ") + std::strerror(errno));
  r->page_ = new (p) lease::Page();
  r->sock_ = new_socket();
  r->stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
  if (r->sock_ < 0 || r->stop_fd_ < 0) return make_error(Errc::io_error, std::string("socket: ") + std::strerror(errno));
  if (connect_now) r->connect_and_register();
  // Born with every signal blocked, as the watcher: the process's signals go to its own threads.
  sigset_t all{}, old{};
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  try {
    r->thread_ = std::thread([raw = r.get()] { raw->run(); });
  } catch (const std::system_error& e) {
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return make_error(Errc::io_error, std::string("cannot start the registration thread: ") + e.what());
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return r;
}

Registration::~Registration() {
  if (thread_.joinable()) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(stop_fd_, &one, sizeof one);
    thread_.join();
  }
  if (sock_ >= 0) ::close(sock_);  // the daemon sees EOF: this handle's leases are released
  if (stop_fd_ >= 0) ::close(stop_fd_);
  if (page_) ::munmap(page_, sizeof(lease::Page));
  if (memfd_ >= 0) ::close(memfd_);
}

bool Registration::connect_and_register() noexcept {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_.size() >= sizeof addr.sun_path) return false;
  std::memcpy(addr.sun_path, socket_.c_str(), socket_.size() + 1);
  const int s = new_socket();
  if (s < 0) return false;
  const auto fail = [&] {
    ::close(s);
    return false;
  };
  if (::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) return fail();
  static constexpr char kRequest[] = "{\"op\":\"register\"}\n";
  iovec iov{const_cast<char*>(kRequest), sizeof kRequest - 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &memfd_, sizeof(int));
  if (::sendmsg(s, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(iov.iov_len)) return fail();
  std::string answer;
  while (answer.find('\n') == std::string::npos) {
    pollfd pfd{s, POLLIN, 0};
    if (::poll(&pfd, 1, kAnswerTimeoutMs) <= 0) return fail();
    char buf[512];
    const ssize_t n = ::read(s, buf, sizeof buf);
    if (n <= 0) return fail();
    answer.append(buf, static_cast<std::size_t>(n));
    if (answer.size() > 4096) return fail();
  }
  if (answer.rfind("{\"ok\":true", 0) != 0) return fail();
  // Atomically the registered connection from now on (see the header).
  if (::dup3(s, sock_, O_CLOEXEC) < 0) return fail();
  ::close(s);
  set_registered(true);
  return true;
}

void Registration::run() noexcept {
  while (true) {
    pollfd pfd[2] = {{stop_fd_, POLLIN, 0}, {sock_, POLLIN, 0}};
    // Registered: wait for the daemon to go away (EOF). Not: retry every kRetryMs.
    const bool up = registered();
    const int n = ::poll(pfd, up ? 2 : 1, up ? -1 : kRetryMs);
    if (n < 0 && errno != EINTR) return;
    if (pfd[0].revents) return;
    if (!up) {
      connect_and_register();
      continue;
    }
    if (pfd[1].revents) {
      char buf[256];
      const ssize_t r = ::recv(sock_, buf, sizeof buf, MSG_DONTWAIT);
      if (r > 0 || (r < 0 && errno == EAGAIN)) continue;  // nothing is expected; ignore it
      // The daemon went away: an unconnected socket takes the number, so task ends in flight
      // write nowhere, until the next registration.
      set_registered(false);
      if (const int fresh = new_socket(); fresh >= 0) {
        ::dup3(fresh, sock_, O_CLOEXEC);
        ::close(fresh);
      }
    }
  }
}

void Registration::set_registered(bool up) noexcept {
  registered_.store(up, std::memory_order_seq_cst);
  state_.fetch_add(1, std::memory_order_seq_cst);
  futex::wake(&state_);
}

void Registration::ping() noexcept {
  static constexpr char kPing = '\n';
  [[maybe_unused]] const ssize_t w = ::send(sock_, &kPing, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int Registration::claim() noexcept { return claim_bit(bits_, page_->header.used); }

int Registration::wait_claim() noexcept { return claim_bit(wait_bits_, page_->header.waits_used); }

std::uint32_t Registration::wait_publish(int i, const core::Token& token) noexcept {
  lease::Wait& r = page_->wait[i];
  const std::uint32_t s = r.seq.load(std::memory_order_relaxed);
  r.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  r.slot.store(token.slot(), std::memory_order_relaxed);
  r.key.store(token.key(), std::memory_order_relaxed);
  r.epoch.store(token.epoch(), std::memory_order_relaxed);
  r.snapshot.store(token.snapshot(), std::memory_order_relaxed);
  r.active.store(1, std::memory_order_relaxed);
  r.seq.store(s + 2, std::memory_order_seq_cst);
  ping();
  return s + 2;
}

bool Registration::wait_acked(int i, std::uint32_t seq, bool& counted) const noexcept {
  const lease::Wait& r = page_->wait[i];
  if (r.ack.load(std::memory_order_acquire) != seq) return false;
  counted = r.counted.load(std::memory_order_relaxed) != 0;
  return true;
}

void Registration::wait_withdraw(int i, std::uint32_t published, bool cancelled) noexcept {
  lease::Wait& r = page_->wait[i];
  const std::uint32_t s = r.seq.load(std::memory_order_relaxed);
  r.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  r.active.store(0, std::memory_order_relaxed);
  r.seq.store(s + 2, std::memory_order_seq_cst);
  // No byte when the daemon holds no count for it or will drop it by itself: its token is
  // cancelled (the record's snapshot is behind the word for good: the daemon never counts it, or
  // retires it), or the daemon acknowledged this publication uncounted (it stores 0 there only
  // after lowering a count). A record not yet acknowledged may be about to be counted, so its
  // withdrawal is said otherwise.
  const bool uncounted = cancelled || (published != 0 && r.ack.load(std::memory_order_seq_cst) == published &&
                                       r.counted.load(std::memory_order_seq_cst) == 0);
  wait_bits_[static_cast<std::uint32_t>(i) / 64].fetch_and(~(1ull << (static_cast<std::uint32_t>(i) % 64)),
                                                           std::memory_order_release);
  if (!uncounted && registered()) ping();
}

bool Registration::wait(const core::Token& token, std::chrono::nanoseconds timeout) noexcept {
  using clock = std::chrono::steady_clock;
  if (token.cancelled()) return true;
  const std::atomic<std::uint32_t>* wake = token.wake_word();
  const int i = wake ? wait_claim() : -1;
  if (i < 0) return token.wait(timeout);  // nothing to count (a default token), or no record free
  const auto deadline = clock::now() + timeout;
  const std::atomic<std::uint32_t>& ack = page_->wait[i].ack;
  std::uint32_t published = 0, seq = 0;
  bool ever_published = false;
  while (true) {
    const std::uint32_t st = state_.load(std::memory_order_seq_cst);
    bool counted = false;
    if (registered()) {
      if (!ever_published || published != st) {  // (re)registered since: ask this daemon
        seq = wait_publish(i, token);
        published = st;
        ever_published = true;
      }
      // The acknowledgement comes in microseconds from a healthy daemon; a stopped one is
      // waited for in slices, the token re-checked between them.
      while (!wait_acked(i, seq, counted)) {
        const std::uint32_t a = ack.load(std::memory_order_seq_cst);
        if (wait_acked(i, seq, counted)) break;
        const auto now = clock::now();
        if (token.cancelled() || now >= deadline || state_.load(std::memory_order_seq_cst) != st) break;
        futex::wait(&ack, a, std::min<std::chrono::nanoseconds>(deadline - now, kWaitSlice));
      }
    }
    // Counted (or not) before this load: a write after it wakes us, or we see its cancellation.
    const std::uint32_t w = wake->load(std::memory_order_seq_cst);
    if (token.cancelled()) break;
    const auto now = clock::now();
    if (now >= deadline) break;
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
    if (!counted && token.writers_count_waits()) left = std::min<std::chrono::nanoseconds>(left, kWaitSlice);
    sleep_two(wake, w, &state_, st, left);
  }
  const bool cancelled = token.cancelled();
  wait_withdraw(i, ever_published ? seq : 0, cancelled);
  return cancelled;
}

void Registration::begin(int i, std::uint32_t slot, std::uint32_t key, std::uint64_t epoch, std::uint64_t snapshot,
                         std::uint64_t root) noexcept {
  lease::Lease& l = page_->lease[i];
  const std::uint32_t s = l.seq.load(std::memory_order_relaxed);
  l.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  l.slot.store(slot, std::memory_order_relaxed);
  l.key.store(key, std::memory_order_relaxed);
  l.epoch.store(epoch, std::memory_order_relaxed);
  l.snapshot.store(snapshot, std::memory_order_relaxed);
  l.root.store(root, std::memory_order_relaxed);
  l.begin_ns.store(coarse_now_ns(), std::memory_order_relaxed);
  l.active.store(1, std::memory_order_relaxed);
  l.seq.store(s + 2, std::memory_order_release);
}

void Registration::end(int i) noexcept {
  lease::Lease& l = page_->lease[i];
  const std::uint32_t s = l.seq.load(std::memory_order_relaxed);
  l.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  l.active.store(0, std::memory_order_relaxed);
  // seq_cst with the daemon's store of the notify word before it reads leases: either it sees
  // this lease ended, or this load sees the word raised and the byte goes out.
  l.seq.store(s + 2, std::memory_order_seq_cst);
  bits_[static_cast<std::uint32_t>(i) / 64].fetch_and(~(1ull << (static_cast<std::uint32_t>(i) % 64)),
                                                      std::memory_order_release);
  if (page_->header.notify.load(std::memory_order_seq_cst) != 0) ping();
}

}  // namespace pkgctx::detail

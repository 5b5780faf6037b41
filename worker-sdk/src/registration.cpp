#include "registration.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <new>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
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

}  // namespace

Result<Registration*> Registration::start(std::string socket) {
  auto r = std::unique_ptr<Registration>(new Registration());
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
  r->connect_and_register();
  r->thread_ = std::thread([raw = r.get()] { raw->run(); });
  return r.release();
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
  registered_.store(true, std::memory_order_release);
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
      registered_.store(false, std::memory_order_release);
      if (const int fresh = new_socket(); fresh >= 0) {
        ::dup3(fresh, sock_, O_CLOEXEC);
        ::close(fresh);
      }
    }
  }
}

int Registration::claim() noexcept {
  for (std::uint32_t w = 0; w < lease::kLeases / 64; ++w) {
    std::uint64_t v = bits_[w].load(std::memory_order_relaxed);
    while (~v != 0) {
      const int bit = __builtin_ctzll(~v);
      if (bits_[w].compare_exchange_weak(v, v | (1ull << bit), std::memory_order_acquire, std::memory_order_relaxed)) {
        const std::uint32_t i = w * 64 + static_cast<std::uint32_t>(bit);
        // The daemon reads no lease at or past `used`: raise it before the lease is written.
        std::uint32_t used = page_->header.used.load(std::memory_order_relaxed);
        while (used <= i && !page_->header.used.compare_exchange_weak(used, i + 1, std::memory_order_release)) {
        }
        return static_cast<int>(i);
      }
    }
  }
  return -1;
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
  if (page_->header.notify.load(std::memory_order_seq_cst) != 0) {
    static constexpr char kPing = '\n';
    [[maybe_unused]] const ssize_t w = ::send(sock_, &kPing, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
}

}  // namespace pkgctx::detail

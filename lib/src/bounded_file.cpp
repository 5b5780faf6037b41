#include "pkgctx/bounded_file.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <istream>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace pkgctx {
namespace {

std::string_view file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  return "a special file";
}

std::string over(std::size_t max) { return "larger than " + std::to_string(max) + " bytes"; }

}  // namespace

Result<std::string> read_bounded_file(const std::string& path, std::size_t max, std::string_view what) {
  const auto fail = [&](const std::string& why) {
    return make_error(Errc::io_error, "cannot read " + std::string(what) + " " + path + ": " + why);
  };
  // O_NONBLOCK: opening a FIFO must not wait for a writer (fstat refuses it right after).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return fail(std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(std::strerror(errno));
  if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)) return std::string();  // /dev/null
  if (!S_ISREG(st.st_mode)) return fail(std::string(file_kind(st.st_mode)) + ", not a regular file");
  // The size a regular file reports is known without reading it; /proc files report 0 and are
  // bounded by the read loop instead.
  if (static_cast<unsigned long long>(st.st_size) > max)
    return fail(over(max));
  std::string text;
  char buf[16384];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) return text;
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(std::strerror(errno));
    }
    if (text.size() + static_cast<std::size_t>(n) > max) return fail(over(max));
    text.append(buf, static_cast<std::size_t>(n));
  }
}

Result<std::string> read_bounded_stream(std::istream& in, std::size_t max, std::string_view what) {
  std::string text;
  char buf[16384];
  while (in) {
    in.read(buf, sizeof buf);
    const auto n = static_cast<std::size_t>(in.gcount());
    if (text.size() + n > max) return make_error(Errc::io_error, "cannot read " + std::string(what) + ": " + over(max));
    text.append(buf, n);
  }
  if (in.bad()) return make_error(Errc::io_error, "cannot read " + std::string(what) + ": read error");
  return text;
}

}  // namespace pkgctx

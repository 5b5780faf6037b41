/* bench/min_client.c — the floor of a fresh `pkgctl update` (DESIGN §8): the least a program can
 * do for the same write. Connects to SOCKET, sends LINE and a newline, reads up to the answer's
 * newline, prints it, exits 0 if it starts {"ok":true. No libraries beyond libc.
 * Usage: pkgctx_min_client SOCKET LINE   |   pkgctx_min_client -   (exits at once: exec floor) */
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "-") == 0) return 0;
  if (argc != 3) return 2;
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof a) != 0) return 4;
  const size_t n = strlen(argv[2]);
  char req[4096];
  if (n + 1 > sizeof req) return 2;
  memcpy(req, argv[2], n);
  req[n] = '\n';
  if (write(fd, req, n + 1) != (ssize_t)(n + 1)) return 4;
  char buf[4096];
  size_t len = 0;
  for (;;) {
    const ssize_t r = read(fd, buf + len, sizeof buf - len);
    if (r <= 0) return 6;
    len += (size_t)r;
    if (buf[len - 1] == '\n' || len == sizeof buf) break;
  }
  if (write(1, buf, len) != (ssize_t)len) return 1;
  return len > 10 && memcmp(buf, "{\"ok\":true", 10) == 0 ? 0 : 5;
}

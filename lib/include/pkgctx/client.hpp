// pkgctx/client.hpp — a small blocking client for pkgctxd's control socket.
//
// One JSON object per line out, one JSON object per line back (daemon/README.md lists the
// ops and answers). call() returns the daemon's answer as is — {"ok":true,…} or
// {"ok":false,"error":{"code":…,"message":…}} — and reserves Result errors for the transport:
//   daemon_unreachable  connect failed (the message names the path and the errno text), or the
//                       daemon closed the connection
//   timed_out           no complete answer within the timeout (the connection is then unusable)
//   io_error            a send/receive error, or an answer that is not one JSON object
//
// Pipelining: send() any number of requests, then receive() their answers in order (tag them
// with "id" to match them up).
//
// Process rules: a Client is one connection; not thread-safe; do not share one across fork().
// SIGPIPE is never raised (MSG_NOSIGNAL).
#pragma once

#include "pkgctx/error.hpp"

#include <boost/json/object.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace pkgctx {

class Client {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout{10000};

  // Connects to the Unix socket at `path`. Errors: daemon_unreachable.
  static Result<Client> connect(const std::string& path, std::chrono::milliseconds timeout = kDefaultTimeout);

  Client(Client&& o) noexcept;
  Client& operator=(Client&& o) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  // Sends `request` and waits for its answer.
  Result<boost::json::object> call(const boost::json::object& request);

  // Pipelining and raw access. send_line() appends '\n' (the text must not contain one).
  Result<void> send(const boost::json::object& request);
  Result<void> send_line(std::string_view line);
  Result<void> send_raw(std::string_view bytes);
  // The next answer line (without '\n'), or parsed.
  Result<std::string> receive_line();
  Result<boost::json::object> receive();

  void set_timeout(std::chrono::milliseconds t) noexcept { timeout_ = t; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  const std::string& path() const noexcept { return path_; }
  int fd() const noexcept { return fd_; }

 private:
  Client(int fd, std::string path, std::chrono::milliseconds timeout)
      : fd_(fd), path_(std::move(path)), timeout_(timeout) {}
  bool has_buffered_answer();  // reads what the daemon already sent; true if a whole line is in
  int fd_ = -1;
  std::string path_;
  std::chrono::milliseconds timeout_;
  std::string in_;  // bytes received past the last answer
};

}  // namespace pkgctx

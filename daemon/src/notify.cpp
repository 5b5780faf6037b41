#include "pkgctx/daemon/notify.hpp"

#include <string>
#include <systemd/sd-daemon.h>

namespace pkgctx::daemon::notify {
namespace {

bool send(const std::string& state) { return ::sd_notify(0, state.c_str()) > 0; }

std::string one_line(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\n') c = ' ';
  }
  return out;
}

}  // namespace

bool ready(std::string_view st) { return send("READY=1\nSTATUS=" + one_line(st)); }
bool status(std::string_view st) { return send("STATUS=" + one_line(st)); }
bool reloading() { return send("RELOADING=1"); }
bool stopping() { return send("STOPPING=1"); }
bool watchdog() { return send("WATCHDOG=1"); }

std::chrono::microseconds watchdog_interval() {
  std::uint64_t usec = 0;
  if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(usec / 2);
}

}  // namespace pkgctx::daemon::notify

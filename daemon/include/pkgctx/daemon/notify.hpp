// pkgctx/daemon/notify.hpp — the service manager protocol (sd_notify(3)), via libsystemd.
//
// Every call is a no-op returning false when $NOTIFY_SOCKET is unset (foreground without
// systemd). libsystemd stays private to the daemon: this header does not include it.
#pragma once

#include <chrono>
#include <string_view>

namespace pkgctx::daemon::notify {

bool ready(std::string_view status);  // READY=1 + STATUS=
bool status(std::string_view status);
bool reloading();                     // RELOADING=1 (READY=1 follows when done)
bool stopping();                      // STOPPING=1
bool watchdog();                      // WATCHDOG=1

// Half of $WATCHDOG_USEC when the manager expects pings from this pid (sd_watchdog_enabled),
// else zero.
std::chrono::microseconds watchdog_interval();

}  // namespace pkgctx::daemon::notify

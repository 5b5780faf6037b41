// pkgctx/daemon/run.hpp — pkgctxd's whole life, called by main().
//
// Exit codes: 0 stopped cleanly (SIGTERM/SIGINT) or --help/--version/--print-config;
// 1 failed at run time (segment locked by another daemon, socket in use, …);
// 2 bad usage or an invalid configuration (systemd: RestartPreventExitStatus=2).
#pragma once

namespace pkgctx::daemon {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

int run(int argc, char** argv);

}  // namespace pkgctx::daemon

// pkgctl batch (DESIGN §7): what cli.cpp and batch.cpp share. Internal to pkgctl_lib.
#pragma once

#include "pkgctl/cli.hpp"
#include "pkgctl/daemon_link.hpp"

#include <string>
#include <vector>

namespace pkgctl::detail {

// The state of one `pkgctl batch`: its one daemon connection, and the error code name of the
// failure the current line reported (empty when the failure had none).
struct BatchContext {
  DaemonLink link;
  std::string last_code;
};

// The commands a batch line may run: those whose output is one JSON line.
bool batch_command(std::string_view name) noexcept;

// One command line, as run() does; with a batch, writes go over its connection. (cli.cpp)
int run_one(int argc, const char* const* argv, Io io, BatchContext* batch);

// `pkgctl batch`: every line of io.in run as `pkgctl <prefix…> <line's words>`. (batch.cpp)
int run_batch(const std::string& socket, const std::vector<std::string>& prefix, Io io);

}  // namespace pkgctl::detail

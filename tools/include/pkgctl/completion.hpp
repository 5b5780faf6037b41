// pkgctl/completion.hpp — `pkgctl completion bash|zsh`: a completion script generated from the
// CLI11 definitions of pkgctl's commands and options, so it never lags behind them.
#pragma once

#include <CLI/App.hpp>

#include <string>
#include <string_view>

namespace pkgctl {

// The script for `shell` ("bash" or "zsh"; the caller validates) completing `app`'s subcommands
// and, after a subcommand, its options; global options taking a value are skipped with theirs.
std::string completion_script(const CLI::App& app, std::string_view shell);

}  // namespace pkgctl

// Internal: the per-process cancellation watcher behind CancelCallback and StopBridge. Do not
// depend on it outside worker-sdk/src.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/token.hpp"

#include <cstdint>
#include <functional>

namespace pkgctx::detail {

using Token = core::Token;

// Registers `fn` to run once on the watcher thread when `token` is cancelled. Runs it inline and
// returns 0 when the token is already cancelled; returns 0 for a token that can never be
// cancelled. Otherwise returns a registration id (never 0). Errors: io_error (no thread).
Result<std::uint64_t> watch_register(const Token& token, std::function<void()> fn) noexcept;

// Unregisters `id` (0: nothing). After it returns the callback is not running and never will,
// unless called from inside that very callback (then it returns at once).
void watch_unregister(std::uint64_t id) noexcept;

// How the watcher sleeps (for tests and the report).
enum class WatchMode { idle, waitv, polling };
WatchMode watch_mode() noexcept;

}  // namespace pkgctx::detail

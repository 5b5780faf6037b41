// Internal: the per-process cancellation watcher behind CancelCallback and StopBridge. Do not
// depend on it outside worker-sdk/src.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/token.hpp"
#include "registration.hpp"

#include <cstdint>
#include <functional>
#include <memory>

namespace pkgctx::detail {

using Token = core::Token;

// Registers `fn` to run once on the watcher thread when `token` is cancelled. Runs it inline and
// returns 0 when the token is already cancelled; returns 0 for a token that can never be
// cancelled. Otherwise returns a registration id (never 0). `reg` (the token's worker
// registration, or null) lets the daemon count the watcher's sleep, so writers wake it exactly.
// Errors: io_error (no thread).
Result<std::uint64_t> watch_register(const Token& token, std::shared_ptr<Registration> reg, std::function<void()> fn) noexcept;

// Unregisters `id` (0: nothing). After it returns the callback is not running and never will,
// unless called from inside that very callback (then it returns at once).
void watch_unregister(std::uint64_t id) noexcept;

// Makes the watcher rebuild its sleep now: a worker handle went away, and the registration the
// watcher holds for its slots should go with it.
void watch_kick() noexcept;

// How the watcher sleeps (for tests and the report).
enum class WatchMode { idle, waitv, polling };
WatchMode watch_mode() noexcept;

}  // namespace pkgctx::detail

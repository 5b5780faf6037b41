// pkgctx/daemon/config.hpp — pkgctxd's configuration: defaults, the config file, flags.
//
// Precedence: built-in defaults < config file < command-line flags. The file is optional when
// it is the default path (/etc/pkgctx/pkgctxd.conf) and required when named with --config.
//
// File format: one `key = value` per line. Blank lines and lines starting with '#' or ';' are
// ignored; there are no inline comments (a '#' inside a value is part of it). A value may be
// wrapped in double quotes. A key may appear once. Unknown keys, bad values and duplicates are
// errors naming the file and line. Every key is listed in systemd/pkgctxd.conf with its default.
//
// Values: sizes accept a K, M or G suffix (binary: 16M = 16777216); modes are octal (0640);
// users and groups are names or numbers; lists are separated by commas and/or spaces.
//
// Keys marked "reloadable" take effect on SIGHUP; the others need a restart (a reload that
// changes one logs that it was ignored).
#pragma once

#include "pkgctx/daemon/log.hpp"
#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace pkgctx::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/pkgctx/pkgctxd.conf";
inline constexpr gid_t kNoGroup = static_cast<gid_t>(-1);
inline constexpr std::size_t kMaxConfigBytes = 1u << 20;  // a longer config file is refused

struct Config {
  // --- fixed for the daemon's life -----------------------------------------------------------
  std::string segment = "pkgctx";                       // segment name (<runtime_dir>/<segment>)
  std::string runtime_dir = pkgctx::kDefaultRuntimeDir; // where the segment and its lock live
  std::string socket = "/run/pkgctx/pkgctxd.sock";      // control socket path
  std::uint32_t capacity = 4096;                        // package slots (at creation)
  std::uint64_t settings_bytes = 16ull << 20;           // settings arena (at creation)
  std::uint32_t max_name = 128;                         // name limit (at creation)
  std::uint32_t max_version = 128;                      // version limit (at creation)
  std::uint64_t max_settings = 1ull << 20;              // canonical settings limit (at creation)
  mode_t segment_mode = 0640;
  gid_t segment_group = kNoGroup;                       // chgrp the segment (-1: daemon's group)
  mode_t socket_mode = 0660;
  gid_t socket_group = kNoGroup;                        // chgrp the socket (-1: daemon's group)
  std::uint32_t heartbeat_ms = 1000;                    // header heartbeat period
  // Following a cluster store (DESIGN §10): "" (none) or "etcd".
  std::string follow;
  std::vector<std::string> etcd_endpoints = {"http://127.0.0.1:2379"};  // tried in turn
  std::string etcd_prefix = "/pkgctx";                  // keys under PREFIX/packages/, PREFIX/status/
  std::string etcd_host;                                // status key's HOST ("": gethostname())
  std::uint32_t etcd_status_ttl_s = 10;                 // lease TTL of this host's status keys
  std::uint32_t etcd_drain_ms = 30000;                  // an etcd delete waits this long for tasks
  std::uint32_t etcd_watch_idle_ms = 2000;              // a silent watch this long: member probed

  // --- reloadable (SIGHUP) -------------------------------------------------------------------
  // Writers besides root and the daemon's own uid (always allowed: they can write the segment
  // directly anyway). A peer may write if its uid is listed or any of its groups is.
  std::vector<uid_t> allow_uids;
  std::vector<gid_t> allow_gids;
  std::size_t max_line_bytes = 2u << 20;    // longest request line
  std::size_t max_read_line_bytes = 16u << 10;  // … from a peer off the write allow-list
  std::size_t max_depth = 64;               // JSON nesting allowed inside "settings"
  std::uint32_t max_clients = 256;          // concurrent connections
  std::uint32_t writer_slots = 16;          // … of which only allow-listed writers may take these
  std::uint32_t max_registered = 4096;      // registered workers (their connections are not
                                            // counted in max_clients nor closed when idle)
  std::size_t max_output_bytes = 64u << 20; // unsent answers per client before it is dropped
  std::uint32_t send_timeout_ms = 30000;    // a client with unsent answers that reads nothing
                                            // for this long is dropped
  std::uint32_t idle_timeout_ms = 60000;    // a client that sends no request this long is closed
  log::Level log_level = log::Level::info;
  bool etcd_owns = true;                    // following etcd: a local write to a package etcd
                                            // holds is refused (owned_by_etcd)
};

// Where the configuration comes from: the file and the flags (as key/value pairs, applied after
// the file with the same parsers; the origin names the flag in errors).
struct ConfigSource {
  std::string path = kDefaultConfigPath;
  bool path_explicit = false;
  struct Override {
    std::string key, value, origin;
  };
  std::vector<Override> overrides;
};

// Defaults, then the file, then the overrides. Errors (message names file:line or the flag):
// io_error (file unreadable, an explicit file missing, not a regular file, or larger than
// kMaxConfigBytes), invalid_settings (bad key or value).
Result<Config> load_config(const ConfigSource& source);

// Applies `key = value` lines to `cfg`. `origin` names the text in errors ("FILE").
Result<void> parse_config_text(std::string_view text, const std::string& origin, Config& cfg);
// Applies one setting. `origin` names it in errors ("FILE:LINE", "--capacity").
Result<void> set_config_value(Config& cfg, std::string_view key, std::string_view value, const std::string& origin);

// Every key with its current value, in file syntax (for --print-config).
std::string format_config(const Config& cfg);

bool is_reloadable(std::string_view key) noexcept;

// What a reload changed, as "key: \"old\" -> \"new\"": reloadable keys now in effect (applied)
// and fixed keys left as they were (ignored: they need a restart).
struct ReloadReport {
  std::vector<std::string> applied, ignored;
};

// Takes the value of every reloadable key (the key table's flag decides) from `next` into `live`.
ReloadReport apply_reload(Config& live, const Config& next);

}  // namespace pkgctx::daemon

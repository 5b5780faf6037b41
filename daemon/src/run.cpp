// pkgctxd's life, top to bottom: logging → arguments → configuration → preconditions →
// signals → segment → socket → READY → loop → STOPPING.
#include "pkgctx/daemon/run.hpp"

#include "pkgctx/daemon/config.hpp"
#include "pkgctx/daemon/log.hpp"
#include "pkgctx/daemon/notify.hpp"
#include "pkgctx/daemon/ownership.hpp"
#include "pkgctx/daemon/protocol.hpp"
#include "pkgctx/daemon/server.hpp"
#include "pkgctx/daemon/registry.hpp"
#if PKGCTX_ETCD
#include "pkgctx/daemon/follower.hpp"
#endif
#include <sys/resource.h>

#include <CLI/CLI.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <variant>

#ifndef PKGCTX_VERSION
#define PKGCTX_VERSION "unknown"
#endif

namespace pkgctx::daemon {
namespace {

struct Args {
  ConfigSource source;
  bool print_config = false;
};

// Parses the command line. Returns an exit code when there is nothing more to do (help,
// version, bad usage).
std::variant<Args, int> parse_args(int argc, char** argv) {
  Args args;
  CLI::App app{"pkgctxd: owns a pkgctx shared-memory segment and serves its control socket.\n"
               "Precedence: defaults < config file < PKGCTX_SEGMENT/PKGCTX_SOCKET/PKGCTX_RUNTIME_DIR < flags.",
               "pkgctxd"};
  app.set_version_flag("--version", "pkgctxd " PKGCTX_VERSION);  // the form of `pkgctl --version`
  std::vector<ConfigSource::Override> flags;
  const auto flag = [&](const char* name, const char* key, const char* help) {
    app.add_option_function<std::string>(
           name, [&flags, key, name](const std::string& v) { flags.push_back({key, v, name}); }, help)
        ->type_name("VALUE");
  };
  app.add_option_function<std::string>(
         "-c,--config",
         [&](const std::string& v) {
           args.source.path = v;
           args.source.path_explicit = true;
         },
         std::string("config file (default ") + kDefaultConfigPath + "; a missing default file is not an error)")
      ->type_name("FILE");
  flag("--segment", "segment", "segment name (config: segment; env PKGCTX_SEGMENT; default pkgctx)");
  flag("--socket", "socket", "control socket path (config: socket; env PKGCTX_SOCKET)");
  flag("--runtime-dir", "runtime_dir",
       "directory of the segment and its lock, writable only by the daemon's user (config: runtime_dir; env "
       "PKGCTX_RUNTIME_DIR; default /run/pkgctx)");
  flag("--capacity", "capacity", "package slots when creating the segment (config: capacity)");
  flag("--settings-bytes", "settings_bytes", "settings arena when creating the segment, K/M/G suffixes");
  flag("--socket-mode", "socket_mode", "control socket file mode, octal (default 0660)");
  flag("--heartbeat-ms", "heartbeat_ms", "heartbeat period in milliseconds (default 1000)");
  flag("--log-level", "log_level", "err, warning, notice, info (default) or debug");
  flag("--follow", "follow", "follow the desired state of a cluster store: etcd (config: follow; default none)");
  flag("--etcd-endpoints", "etcd_endpoints", "etcd client URLs, comma-separated (config: etcd_endpoints)");
  flag("--prefix", "etcd_prefix", "etcd key prefix (config: etcd_prefix; default /pkgctx)");
  app.add_option_function<std::vector<std::string>>(
         "--set",
         [&](const std::vector<std::string>& kvs) {
           for (const std::string& kv : kvs) {
             const auto eq = kv.find('=');
             flags.push_back({kv.substr(0, eq), eq == std::string::npos ? std::string() : kv.substr(eq + 1),
                              "--set " + kv});
           }
         },
         "KEY=VALUE: set any config-file key (repeatable)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false);
  bool foreground = true;
  app.add_flag("--foreground", foreground, "stay in the foreground (pkgctxd always does: systemd Type=notify supervises it)");
  app.add_flag("--print-config", args.print_config, "print the effective configuration and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "pkgctxd: %s\nRun 'pkgctxd --help' for usage.\n", e.what());
    return kExitUsage;
  }
  // Environment (as pkgctl reads it) sits between the file and the flags.
  for (const auto& [env, key] : {std::pair{"PKGCTX_SEGMENT", "segment"}, std::pair{"PKGCTX_SOCKET", "socket"},
                                 std::pair{"PKGCTX_RUNTIME_DIR", "runtime_dir"}}) {
    if (const char* v = std::getenv(env); v && *v) args.source.overrides.push_back({key, v, env});
  }
  for (auto& f : flags) args.source.overrides.push_back(std::move(f));
  return args;
}

// Checks what the configuration cannot check key by key. Only warns: each value is valid alone.
void check_preconditions(const Config& cfg) {
  if (cfg.max_settings > cfg.settings_bytes)
    log::warning("max_settings (" + std::to_string(cfg.max_settings) + ") is larger than the settings area (" +
                 std::to_string(cfg.settings_bytes) + " settings_bytes): larger settings will be refused with "
                 "settings_full");
}

ServerLimits server_limits(const Config& cfg) {
  ServerLimits l;
  l.max_line_bytes = cfg.max_line_bytes;
  l.max_read_line_bytes = cfg.max_read_line_bytes;
  l.max_output_bytes = cfg.max_output_bytes;
  l.max_clients = cfg.max_clients;
  l.writer_slots = cfg.writer_slots;
  l.max_registered = cfg.max_registered;
  l.send_timeout = std::chrono::milliseconds(cfg.send_timeout_ms);
  l.idle_timeout = std::chrono::milliseconds(cfg.idle_timeout_ms);
  return l;
}

ProtocolOptions protocol_options(const Config& cfg) {
  return {cfg.max_depth, AllowList{::getuid(), cfg.allow_uids, cfg.allow_gids}, cfg.etcd_owns};
}

SegmentOptions segment_options(const Config& cfg) {
  SegmentOptions o;
  o.capacity = cfg.capacity;
  o.settings_bytes = cfg.settings_bytes;
  o.limits.max_name = cfg.max_name;
  o.limits.max_version = cfg.max_version;
  o.limits.max_settings = cfg.max_settings;
  o.limits.max_depth = cfg.max_depth;
  o.mode = cfg.segment_mode;
  o.group = cfg.segment_group;
  o.dir = cfg.runtime_dir;
  return o;
}

std::string status_line(const Store& store, const ConnectionStats& c) {
  const SegmentInfo i = store.segment().info();
  return "Serving segment " + i.name + " (" + std::to_string(i.used) + "/" + std::to_string(i.capacity) +
         " packages) on " + c.socket + "; " + std::to_string(c.clients) + " clients";
}

// Blocks the signals the loop handles and returns a signalfd for them.
Result<int> take_signals() {
  std::signal(SIGPIPE, SIG_IGN);  // a vanished client is an error return, not a death
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0)
    return make_error(Errc::io_error, std::string("sigprocmask: ") + std::strerror(errno));
  const int fd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) return make_error(Errc::io_error, std::string("signalfd: ") + std::strerror(errno));
  return fd;
}

// What the loop does besides serving: the periodic tick (heartbeat, crash repair, watchdog,
// status) and SIGHUP reloads.
class Housekeeper {
 public:
  Housekeeper(Config& cfg, const ConfigSource& source, Store& store, Protocol& protocol,
              const ConnectionStats& connections)
      : cfg_(cfg),
        source_(source),
        store_(store),
        protocol_(protocol),
        connections_(connections),
        watchdog_(notify::watchdog_interval()) {
    tick_ = std::chrono::milliseconds(cfg.heartbeat_ms);
    if (watchdog_.count() > 0) tick_ = std::min<std::chrono::nanoseconds>(tick_, watchdog_ / 2);
  }

  std::chrono::nanoseconds tick() const noexcept { return tick_; }
  Server::Hooks hooks() {
    return {[this] { on_tick(); }, [this] { return on_reload(); }};
  }
  void ready() {
    last_status_ = status_line(store_, connections_);
    notify::ready(last_status_);
    last_watchdog_ns_ = last_status_ns_ = mono_now_ns();
  }

 private:
  // Watchdog pings go out at half of WATCHDOG_USEC; status updates at most every few seconds
  // (the manager's datagram queue is short and sd_notify() blocks when it is full).
  void on_tick() {
    store_.segment().heartbeat();
    if (store_.repair_if_needed()) log::notice("Repaired segment " + cfg_.segment + " after a writer died mid-write");
    const std::uint64_t now = mono_now_ns();
    const auto tick_ns = static_cast<std::uint64_t>(tick_.count());
    if (watchdog_.count() > 0 && now - last_watchdog_ns_ + tick_ns >= static_cast<std::uint64_t>(watchdog_.count())) {
      notify::watchdog();
      last_watchdog_ns_ = now;
    }
    if (now - last_status_ns_ >= kStatusEveryNs) {
      std::string st = status_line(store_, connections_);
      if (st != last_status_) {
        notify::status(st);
        last_status_ = std::move(st);
      }
      last_status_ns_ = now;
    }
  }

  // Returns the server's new limits, or nothing when the configuration could not be read.
  std::optional<ServerLimits> on_reload() {
    notify::reloading();
    std::optional<ServerLimits> limits;
    auto next = load_config(source_);
    if (!next) {
      log::error("Failed to reload configuration: " + next.error().message + "; keeping the current one");
    } else {
      const ReloadReport changes = apply_reload(cfg_, *next);
      for (const std::string& change : changes.ignored) log::warning("Ignored change of " + change + ": needs a restart");
      log::set_max_level(cfg_.log_level);
      protocol_.configure(protocol_options(cfg_));
      limits = server_limits(cfg_);
      std::string what;
      for (const std::string& change : changes.applied) what += (what.empty() ? "" : "; ") + change;
      log::info("Reloaded configuration from " + source_.path + ": " + (what.empty() ? "no changes" : what));
    }
    notify::ready(status_line(store_, connections_));
    return limits;
  }

  static constexpr std::uint64_t kStatusEveryNs = 5'000'000'000ull;
  Config& cfg_;
  const ConfigSource& source_;
  Store& store_;
  Protocol& protocol_;
  const ConnectionStats& connections_;
  std::chrono::nanoseconds watchdog_;
  std::chrono::nanoseconds tick_;
  std::string last_status_;
  std::uint64_t last_watchdog_ns_ = 0, last_status_ns_ = 0;
};

}  // namespace

int run(int argc, char** argv) {
  // Logging.
  log::init("pkgctxd");

  // Arguments.
  auto parsed = parse_args(argc, argv);
  if (const int* code = std::get_if<int>(&parsed)) return *code;
  const Args args = std::get<Args>(std::move(parsed));

  // Configuration.
  auto loaded = load_config(args.source);
  if (!loaded) {
    log::error("Failed to load configuration: " + loaded.error().message);
    return kExitUsage;
  }
  Config cfg = std::move(*loaded);
  if (args.print_config) {
    std::cout << format_config(cfg);
    return kExitOk;
  }
  log::set_max_level(cfg.log_level);
  log::set_segment(cfg.segment);

  // Preconditions.
  check_preconditions(cfg);
#if !PKGCTX_ETCD
  if (cfg.follow == "etcd") {
    log::error("Cannot follow etcd: this pkgctxd was built without etcd support (PKGCTX_ETCD=OFF)");
    return kExitUsage;
  }
#endif

  // Signals: blocked before anything is created, so a SIGTERM during start-up is handled by the
  // loop as a clean stop.
  auto signal_fd = take_signals();
  if (!signal_fd) {
    log::error("Failed to set up signal handling: " + signal_fd.error().message);
    return kExitFailure;
  }

  // Runtime directory: made if missing (outside systemd and tmpfiles), and only used when no one
  // else may write it, owned by this daemon's user, since readers trust objects owned by it.
  if (::mkdir(cfg.runtime_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    log::error("Failed to create runtime directory " + cfg.runtime_dir + ": " + std::strerror(errno));
    return kExitFailure;
  }
  if (auto owner = check_runtime_dir(cfg.runtime_dir); !owner) {
    log::error("Refusing runtime directory: " + owner.error().message);
    return kExitFailure;
  } else if (*owner != ::geteuid()) {
    log::error("Refusing runtime directory " + cfg.runtime_dir + ": owned by uid " + std::to_string(*owner) +
               ", but pkgctxd runs as uid " + std::to_string(::geteuid()) +
               " (readers trust only objects owned by the directory's owner)");
    return kExitFailure;
  }

  // Segment: one owner at a time, then create, re-attach or replace.
  auto lock = SegmentLock::acquire(cfg.segment, cfg.runtime_dir);
  if (!lock) {
    log::error("Failed to lock segment " + cfg.segment + ": " + lock.error().message);
    return kExitFailure;
  }
  auto owned = take_segment(cfg.segment, segment_options(cfg));
  if (!owned) {
    log::error("Failed to open segment " + cfg.segment + ": " + owned.error().message);
    return kExitFailure;
  }
  Store& store = *owned->store;
  const Segment& segment = store.segment();
  // A segment this start created (fresh, or replacing an incompatible one) is removed again if
  // the start fails from here on: nobody can hold a token of it yet, and a failed start must not
  // leave megabytes of shared memory behind. One it re-attached to stays, whatever happens.
  struct CreatedSegment {
    const Config& cfg;
    bool remove;
    ~CreatedSegment() {
      if (!remove) return;
      Segment::remove(cfg.segment, cfg.runtime_dir);
      log::info("Removed segment " + cfg.segment + ", created by this failed start");
    }
  } created{cfg, owned->how != Takeover::reattached};

  // Socket.
  auto listener = Listener::open(cfg.socket, cfg.socket_mode, cfg.socket_group);
  if (!listener) {
    log::error("Failed to open control socket " + cfg.socket + ": " + listener.error().message);
    return kExitFailure;
  }

  ConnectionStats connections{cfg.socket};
  Protocol protocol(store, protocol_options(cfg), &connections);
  Registry registry(store);
  protocol.set_registry(&registry);
  Housekeeper keeper(cfg, args.source, store, protocol, connections);
  auto server = Server::create(protocol, *listener, connections, *signal_fd, keeper.tick(), server_limits(cfg),
                               keeper.hooks());
  if (!server) {
    log::error("Failed to start the event loop: " + server.error().message);
    return kExitFailure;
  }
  (*server)->set_registry(&registry);
  // Each registered worker costs a socket and a pidfd: take the hard descriptor limit, so
  // thousands of workers fit (the default soft limit, 1024, would not).
  if (rlimit rl{}; ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }

  // READY: from here on the segment stays, whatever happens.
  created.remove = false;
  segment.mark_daemon_running(::getpid(), static_cast<std::uint64_t>(cfg.heartbeat_ms) * 1'000'000u);
  keeper.ready();
  log::info("Ready: segment " + cfg.segment + " (" + std::string(takeover_name(owned->how)) + "), socket " +
            cfg.socket + ", pid " + std::to_string(::getpid()));

  // The cluster store, followed from threads of its own: the segment is served meanwhile.
#if PKGCTX_ETCD
  std::unique_ptr<EtcdFollower> follower;
  if (cfg.follow == "etcd") {
    std::string host = cfg.etcd_host;
    if (host.empty()) {
      char buf[256] = {};
      ::gethostname(buf, sizeof buf - 1);
      host = buf;
    }
    FollowOptions fo{cfg.etcd_endpoints, cfg.etcd_prefix, host, cfg.etcd_status_ttl_s, cfg.etcd_drain_ms,
                     cfg.etcd_watch_idle_ms, object_path(cfg.segment + ".etcd-owned", cfg.runtime_dir),
                     // Workers of a re-attached segment re-register within 200 ms: ten times that.
                     owned->how == Takeover::reattached ? 2000u : 0u, {}, {}};
    // A delete's drain runs in the loop, where the registry lives.
    fo.drain = [&loop = **server, &registry, &store](const std::string& name, std::uint64_t timeout_ms,
                                                    Registry::Holders holders, Registry::Done done) {
      loop.post([&registry, &store, name, timeout_ms, holders = std::move(holders), done = std::move(done)]() mutable {
        auto slot = store.view().find(name);
        if (!slot) return done(true, {});
        registry.drain(*slot, timeout_ms, std::move(holders), std::move(done));
      });
    };
    fo.woke = [&loop = **server, &registry](std::uint64_t wakes_before) {
      loop.post([&registry, wakes_before] { registry.retire_woken(wakes_before); });
    };
    follower = std::make_unique<EtcdFollower>(store, std::move(fo));
    protocol.set_owner_check([&f = *follower](std::string_view name) { return f.owns(name); });
    if (auto ok = follower->start(); !ok) {
      log::error("Failed to follow etcd: " + ok.error().message);
      return kExitFailure;
    }
    log::info("Following etcd at " + cfg.etcd_endpoints.front() + (cfg.etcd_endpoints.size() > 1 ? " (and others)" : "") +
              ", prefix " + cfg.etcd_prefix + ", host " + host + " (applied revision " +
              std::to_string(store.follow_revision()) + ")");
  }
#endif

  // Loop.
  auto stopped_by = (*server)->run();
#if PKGCTX_ETCD
  if (follower) follower->stop();
#endif

  // STOPPING.
  notify::stopping();
  segment.mark_daemon_stopped();
  if (!stopped_by) {
    log::error("Failed to serve the control socket: " + stopped_by.error().message);
    return kExitFailure;
  }
  log::info(std::string("Stopping on ") + (*stopped_by == SIGINT ? "SIGINT" : "SIGTERM") + ": segment " +
            cfg.segment + " stays for workers and the next daemon");
  return kExitOk;
}

}  // namespace pkgctx::daemon

// pkgctxd configuration: the file format, value parsing, precedence and reload diffs.
#define BOOST_TEST_MODULE daemon_config
#include <boost/test/unit_test.hpp>

#include "pkgctx/daemon/config.hpp"
#include "pkgctx/daemon/test_harness.hpp"

#include <fstream>
#include <sys/stat.h>

using namespace pkgctx;
using namespace pkgctx::daemon;

namespace {

Config parse_ok(std::string_view text) {
  Config c;
  auto r = parse_config_text(text, "test.conf", c);
  BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
  return c;
}

std::string parse_err(std::string_view text) {
  Config c;
  auto r = parse_config_text(text, "test.conf", c);
  BOOST_TEST_REQUIRE(!r.has_value(), "expected an error for: " << text);
  return r.error().message;
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

}  // namespace

BOOST_AUTO_TEST_CASE(defaults_match_the_contract) {
  const Config c;
  BOOST_TEST(c.segment == "pkgctx");
  BOOST_TEST(c.socket == "/run/pkgctx/pkgctxd.sock");
  BOOST_TEST(c.segment_mode == 0640u);
  BOOST_TEST(c.socket_mode == 0660u);
  BOOST_TEST(c.max_name == 128u);
  BOOST_TEST(c.max_settings == 1u << 20);
}

BOOST_AUTO_TEST_CASE(every_key_parses) {
  const Config c = parse_ok(R"(
# comment
; also a comment
segment = my-seg.1
socket = "/run/x/y.sock"
capacity = 2K
settings_bytes = 32M
max_name = 64
max_version = 32
max_settings = 512K
segment_mode = 0600
segment_group = 0
socket_mode = 660
socket_group = root
heartbeat_ms = 250
allow_uids = root, 1000 65534
allow_gids = 0,4242
max_line_bytes = 1M
max_depth = 10
max_clients = 8
max_output_bytes = 1G
send_timeout_ms = 500
log_level = debug
)");
  BOOST_TEST(c.segment == "my-seg.1");
  BOOST_TEST(c.socket == "/run/x/y.sock");
  BOOST_TEST(c.capacity == 2048u);
  BOOST_TEST(c.settings_bytes == 32u << 20);
  BOOST_TEST(c.max_settings == 512u << 10);
  BOOST_TEST(c.segment_mode == 0600u);
  BOOST_TEST(c.segment_group == 0u);
  BOOST_TEST(c.socket_mode == 0660u);
  BOOST_TEST(c.socket_group == 0u);
  BOOST_TEST(c.heartbeat_ms == 250u);
  BOOST_TEST((c.allow_uids == std::vector<uid_t>{0, 1000, 65534}));
  BOOST_TEST((c.allow_gids == std::vector<gid_t>{0, 4242}));
  BOOST_TEST(c.max_line_bytes == 1u << 20);
  BOOST_TEST(c.max_depth == 10u);
  BOOST_TEST(c.max_clients == 8u);
  BOOST_TEST(c.max_output_bytes == 1u << 30);
  BOOST_TEST(c.send_timeout_ms == 500u);
  BOOST_TEST(static_cast<int>(c.log_level) == static_cast<int>(log::Level::debug));
}

BOOST_AUTO_TEST_CASE(errors_name_the_line_and_the_problem) {
  BOOST_TEST(contains(parse_err("\n\nbogus = 1\n"), "test.conf:3: unknown key \"bogus\""));
  BOOST_TEST(contains(parse_err("capacity = 0\n"), "test.conf:1: capacity: 0 is out of range"));
  BOOST_TEST(contains(parse_err("capacity = ten\n"), "not a non-negative integer"));
  BOOST_TEST(contains(parse_err("capacity = 99999999999999999999G\n"), "capacity"));
  BOOST_TEST(contains(parse_err("segment_mode = 0999\n"), "octal"));
  BOOST_TEST(contains(parse_err("segment = a/b\n"), "not a segment name"));
  BOOST_TEST(contains(parse_err("socket = relative.sock\n"), "absolute"));
  BOOST_TEST(contains(parse_err("socket = /" + std::string(120, 'x') + "\n"), "at most 107"));
  BOOST_TEST(contains(parse_err("allow_uids = no-such-user-pkgctx\n"), "no such user"));
  BOOST_TEST(contains(parse_err("allow_gids = no-such-group-pkgctx\n"), "no such group"));
  BOOST_TEST(contains(parse_err("log_level = loud\n"), "not one of"));
  BOOST_TEST(contains(parse_err("capacity 5\n"), "expected \"key = value\""));
  BOOST_TEST(contains(parse_err("capacity = 5\ncapacity = 6\n"), "test.conf:2: key \"capacity\" is set twice"));
}

BOOST_AUTO_TEST_CASE(missing_default_file_is_fine_missing_explicit_file_is_not) {
  ConfigSource src;
  src.path = "/nonexistent/pkgctxd.conf";
  src.path_explicit = false;
  BOOST_TEST(load_config(src).has_value());
  src.path_explicit = true;
  auto r = load_config(src);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(contains(r.error().message, "/nonexistent/pkgctxd.conf"));
  BOOST_TEST(contains(r.error().message, "No such file"));
}

BOOST_AUTO_TEST_CASE(only_bounded_regular_files_are_read) {
  testing::TempDir dir;
  BOOST_TEST_REQUIRE(::mkfifo((dir / "fifo").c_str(), 0600) == 0);
  {
    std::ofstream big(dir / "big.conf");
    big << std::string(kMaxConfigBytes, '#') << "\n";
  }
  {
    std::ofstream(dir / "max.conf") << "# fits\n" << std::string(kMaxConfigBytes - 8, '#');
  }
  const std::vector<std::pair<std::string, std::string>> refused = {
      {dir.path(), "a directory, not a regular file"},
      {"/dev/zero", "a character device, not a regular file"},
      {dir / "fifo", "a FIFO, not a regular file"},
      {dir / "big.conf", "larger than 1048576 bytes"},
      {"/proc/self/mem", "Input/output error"},  // a regular file whose read fails
  };
  for (const auto& [path, why] : refused) {
    for (const bool expl : {true, false}) {
      ConfigSource src;
      src.path = path;
      src.path_explicit = expl;
      auto r = load_config(src);
      BOOST_TEST_REQUIRE(!r.has_value(), path);
      BOOST_TEST(r.error().message == "cannot read config file " + path + ": " + why);
    }
  }
  ConfigSource fits;
  fits.path = dir / "max.conf";
  BOOST_TEST(load_config(fits).has_value());
  // /dev/null is the usual "no config file" and reads as empty.
  ConfigSource none;
  none.path = "/dev/null";
  none.path_explicit = true;
  auto defaults = load_config(none);
  BOOST_TEST_REQUIRE(defaults.has_value());
  BOOST_TEST(format_config(*defaults) == format_config(Config{}));
}

BOOST_AUTO_TEST_CASE(flags_override_the_file) {
  testing::TempDir dir;
  {
    std::ofstream(dir / "c.conf") << "segment = from-file\ncapacity = 10\n";
  }
  ConfigSource src;
  src.path = dir / "c.conf";
  src.path_explicit = true;
  src.overrides.push_back({"capacity", "20", "--capacity"});
  auto r = load_config(src);
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->segment == "from-file");
  BOOST_TEST(r->capacity == 20u);

  src.overrides.push_back({"capacity", "x", "--capacity"});
  auto bad = load_config(src);
  BOOST_TEST_REQUIRE(!bad.has_value());
  BOOST_TEST(contains(bad.error().message, "--capacity: capacity:"));
}

BOOST_AUTO_TEST_CASE(the_shipped_example_parses_to_the_defaults) {
  ConfigSource src;
  src.path = std::string(PKGCTX_SOURCE_DIR) + "/systemd/pkgctxd.conf";
  src.path_explicit = true;
  auto r = load_config(src);
  BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
  BOOST_TEST(format_config(*r) == format_config(Config{}));
  // And every key of format_config appears in the example, documented.
  std::ifstream in(src.path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::istringstream keys(format_config(Config{}));
  for (std::string line; std::getline(keys, line);) {
    const std::string key = line.substr(0, line.find(' '));
    BOOST_TEST(contains(text, "#" + key + " ="), "example lacks key " << key);
  }
}

BOOST_AUTO_TEST_CASE(reload_takes_runtime_keys_and_reports_fixed_ones) {
  Config live;
  const Config next = parse_ok("allow_uids = 1000\nmax_clients = 3\nsegment = other\ncapacity = 7\nlog_level = debug\n");
  const ReloadReport r = apply_reload(live, next);
  BOOST_TEST(r.applied.size() == 3u);
  BOOST_TEST(r.ignored.size() == 2u);
  BOOST_TEST(contains(r.applied[0], "allow_uids"));
  BOOST_TEST(contains(r.ignored[0], "segment"));
  // Reloadable keys now hold the new values; fixed ones keep the old.
  BOOST_TEST((live.allow_uids == std::vector<uid_t>{1000}));
  BOOST_TEST(live.max_clients == 3u);
  BOOST_TEST(static_cast<int>(live.log_level) == static_cast<int>(log::Level::debug));
  BOOST_TEST(live.segment == "pkgctx");
  BOOST_TEST(live.capacity == Config{}.capacity);
  BOOST_TEST(apply_reload(live, next).applied.empty());
  BOOST_TEST(is_reloadable("allow_gids"));
  BOOST_TEST(!is_reloadable("socket"));
}

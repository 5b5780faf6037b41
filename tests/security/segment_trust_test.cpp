// DESIGN §4.1, the segment's promises, each attacked as issue 11 describes: `nobody` squats the
// names (no squatting), a writable segment holds garbage (no trust in bytes), a planted sparse
// segment is retired (no amplification), and a token printed before a version-skew replacement
// is checked afterwards (it reads segment_retired). The tests run as root; `nobody` is a child
// that dropped its ids (test::as_nobody).
#define BOOST_TEST_MODULE segment_trust
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctl/cli.hpp"
#include "pkgctx.h"
#include "pkgctx/layout.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"

#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <fstream>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace pkgctx;
using namespace std::chrono_literals;
using daemon::testing::DaemonProcess;
using daemon::testing::TempDir;

namespace {

constexpr uid_t kNobody = 65534;

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

struct Run {
  int code = -1;
  std::string out, err;
};

// pkgctl in this process, with PKGCTX_SEGMENT (and whatever PKGCTX_RUNTIME_DIR is set).
Run run_pkgctl(const std::string& seg, std::vector<std::string> args) {
  ::setenv("PKGCTX_SEGMENT", seg.c_str(), 1);
  args.insert(args.begin(), "pkgctl");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  std::istringstream in;
  Run r;
  r.code = pkgctl::run(static_cast<int>(argv.size()), argv.data(), {out, err, in});
  ::unsetenv("PKGCTX_SEGMENT");
  r.out = out.str();
  r.err = err.str();
  return r;
}

// Points every reader in this process (and the daemons it forks) at `dir` while alive.
struct RuntimeDirScope {
  std::string saved;
  explicit RuntimeDirScope(const std::string& dir) : saved(std::getenv("PKGCTX_RUNTIME_DIR")) {
    ::setenv("PKGCTX_RUNTIME_DIR", dir.c_str(), 1);
  }
  ~RuntimeDirScope() { ::setenv("PKGCTX_RUNTIME_DIR", saved.c_str(), 1); }
};

// A scratch directory on the runtime directory's file system (/dev/shm in tests).
struct ShmDir {
  std::string path;
  ShmDir() {
    char tmpl[] = "/dev/shm/pkgctx-evidence-XXXXXX";
    BOOST_TEST_REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~ShmDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& path, const std::string& bytes, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, mode);
  BOOST_TEST_REQUIRE(fd >= 0, path);
  BOOST_TEST_REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// The reader-side refusals of an untrusted object: Segment::open, the worker SDK, pkgctl.
void readers_refuse(const std::string& seg, const std::string& dir) {
  auto s = Segment::open(seg, Access::read_only, dir);
  BOOST_TEST_REQUIRE(!s.has_value());
  BOOST_TEST(s.error().code == Errc::untrusted_segment, s.error().message);
  RuntimeDirScope scope(dir);
  pkgctx_worker_t* w = nullptr;
  BOOST_TEST(pkgctx_attach(seg.c_str(), &w) == PKGCTX_UNTRUSTED_SEGMENT, pkgctx_last_error());
  const Run dump = run_pkgctl(seg, {"dump"});
  BOOST_TEST(dump.code != 0);
  BOOST_TEST((contains(dump.err, "trust") || contains(dump.err, "writable by others")), dump.err);
}

}  // namespace

// Issue 11 #1, in a runtime directory nobody may write (like /tmp): nobody plants a table full of
// garbage and a symlink at the lock's name pointing at a root file. The daemon refuses to start,
// naming the directory's owner and mode, and writes nothing; every reader refuses.
BOOST_AUTO_TEST_CASE(squatting_in_a_directory_others_can_write_is_refused) {
  TempDir work;
  BOOST_TEST_REQUIRE(::chmod(work.path().c_str(), 0755) == 0);
  const std::string dir = work / "run";
  BOOST_TEST_REQUIRE(::mkdir(dir.c_str(), 01777) == 0);
  BOOST_TEST_REQUIRE(::chmod(dir.c_str(), 01777) == 0);
  const std::string victim = work / "victim";
  write_file(victim, "root's file\n", 0644);
  test::DaemonEnv env("squat");
  const test::SegmentName& seg = env.seg;

  const int planted = test::as_nobody({}, [&] {
    const std::string garbage(1 << 16, 'G');
    const int fd = ::open((dir + "/" + seg.str()).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0666);
    if (fd < 0 || ::write(fd, garbage.data(), garbage.size()) != static_cast<ssize_t>(garbage.size())) return 1;
    ::close(fd);
    return ::symlink(victim.c_str(), (dir + "/" + seg.str() + ".lock").c_str()) == 0 ? 0 : 2;
  });
  BOOST_TEST_REQUIRE(planted == 0);

  DaemonProcess d(env.dir, env.opts({"--runtime-dir", dir}));
  BOOST_TEST(!d.ready());
  BOOST_TEST(d.wait_for(10s).value_or(-1) == 1, d.stderr_text());
  BOOST_TEST(contains(d.stderr_text(), "is writable by others"), d.stderr_text());
  BOOST_TEST(contains(d.stderr_text(), "mode 1777"), d.stderr_text());
  BOOST_TEST(read_file(victim) == "root's file\n");
  struct stat st {};
  BOOST_TEST_REQUIRE(::lstat((dir + "/" + seg.str() + ".lock").c_str(), &st) == 0);
  BOOST_TEST(S_ISLNK(st.st_mode));  // not followed, not replaced: the daemon did not use the directory

  readers_refuse(seg.str(), dir);
  ::unlink((dir + "/" + seg.str()).c_str());
  ::unlink((dir + "/" + seg.str() + ".lock").c_str());
}

// Issue 11 #1, in the daemon's own directory (0755): nobody cannot create anything there. Objects
// that are nevertheless foreign (nobody's segment, writable by all, hard-linked in; a symlink at
// the lock's name) are refused by readers, and the daemon replaces them without writing through
// them: the planted inode and the symlink's target keep their bytes.
BOOST_AUTO_TEST_CASE(foreign_objects_in_the_daemons_directory_are_replaced_never_used) {
  const std::string dir = runtime_dir();
  test::DaemonEnv env("foreign");
  const test::SegmentName& seg = env.seg;
  const int denied = test::as_nobody({}, [&] {
    const int fd = ::open((dir + "/" + seg.str()).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0666);
    return fd < 0 && errno == EACCES ? 0 : 1;
  });
  BOOST_TEST(denied == 0);

  // nobody's own segment (as its own pkgctxd would leave it), made writable by everyone. Kept
  // in a directory of the same file system so the planted inode can be linked in.
  ShmDir elsewhere;
  test::create_store_with(seg, test::segment_options(16, 4096), "1");
  const std::string planted = elsewhere / "planted";
  BOOST_TEST_REQUIRE(::rename(test::segment_path(seg).c_str(), planted.c_str()) == 0);
  BOOST_TEST_REQUIRE(::chown(planted.c_str(), kNobody, kNobody) == 0);
  BOOST_TEST_REQUIRE(::chmod(planted.c_str(), 0666) == 0);
  BOOST_TEST_REQUIRE(::link(planted.c_str(), test::segment_path(seg).c_str()) == 0);
  const std::string victim = elsewhere / "victim";
  write_file(victim, "7\n", 0644);
  BOOST_TEST_REQUIRE(::symlink(victim.c_str(), test::segment_path(seg.str() + ".lock").c_str()) == 0);
  const std::string before = read_file(planted);

  readers_refuse(seg, dir);
  {
    auto s = Segment::open(seg, Access::read_only);
    BOOST_TEST_REQUIRE(!s.has_value());
    BOOST_TEST(contains(s.error().message, "owned by uid 65534 with mode 0666"), s.error().message);
  }

  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(contains(d.stderr_text(), "Replacing lock"), d.stderr_text());
  BOOST_TEST(contains(d.stderr_text(), "Replacing segment " + seg.str() + " without using it"), d.stderr_text());
  BOOST_TEST(contains(d.stderr_text(), "uid 65534 with mode 0666"), d.stderr_text());
  BOOST_TEST(read_file(victim) == "7\n");
  BOOST_TEST(read_file(planted) == before);  // not one byte written through it
  auto v = View::open(seg);
  BOOST_TEST_REQUIRE(v.has_value(), (v ? std::string() : v.error().message));
  BOOST_TEST(v->segment().info().used == 0u);  // a new segment, not nobody's
  struct stat st {};
  BOOST_TEST_REQUIRE(::lstat(test::segment_path(seg.str() + ".lock").c_str(), &st) == 0);
  BOOST_TEST((S_ISREG(st.st_mode) && st.st_uid == 0));
}

namespace {

// Raw write access to package `name`'s record in segment `seg` (as a squatter would have).
struct Tamper {
  Segment seg;
  layout::SlotData* data = nullptr;
  explicit Tamper(const std::string& name, const std::string& package) {
    auto s = Segment::open(name, Access::read_write);
    BOOST_TEST_REQUIRE(s.has_value());
    seg = *s;
    auto slot = View(seg).find(package);
    BOOST_TEST_REQUIRE(slot.has_value());
    data = &seg.slot(*slot).data;
  }
  std::uint64_t word(std::size_t i) const { return data->w[i].load(); }
  void set(std::size_t i, std::uint64_t v) const { data->w[i].store(v); }
  char* settings() const { return reinterpret_cast<char*>(seg.arena()) + word(layout::dw::kSettingsOff); }
};

void expect_corrupt_everywhere(test::DaemonEnv& env, const std::string& package, bool settings_only) {
  const Run s = run_pkgctl(env.seg, {"settings", package});
  BOOST_TEST(s.code != 0, s.out);
  BOOST_TEST((contains(s.err, "corrupt") || contains(s.err, "checksum") || contains(s.err, "canonical")), s.err);
  BOOST_TEST(s.out.empty(), s.out);

  Client c = test::connect(env.sock);
  auto a = test::call(c, R"({"op":"settings","name":")" + package + R"(","id":1})");
  BOOST_TEST(a.at("ok") == false, boost::json::serialize(a));
  BOOST_TEST(a.at("error").at("code") == "corrupt", boost::json::serialize(a));
  // The next answer on the connection is the next request's: nothing was split off.
  auto b = test::call(c, R"({"op":"need_update","name":"other","version":"1","checksum":"0000000000000000","id":2})");
  BOOST_TEST(b.at("id") == 2, boost::json::serialize(b));

  pkgctx_worker_t* w = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_attach(env.seg.c_str(), &w) == PKGCTX_OK, pkgctx_last_error());
  pkgctx_package_t p{};
  BOOST_TEST(pkgctx_read(w, package.c_str(), &p) == PKGCTX_CORRUPT, pkgctx_last_error());
  pkgctx_detach(w);

  if (settings_only) return;
  const Run d = run_pkgctl(env.seg, {"dump"});
  BOOST_TEST(d.code != 0, d.out);
  BOOST_TEST((contains(d.err, "corrupt") || contains(d.err, "not a valid")), d.err);
  auto dd = test::call(c, R"({"op":"dump","id":3})");
  BOOST_TEST(dd.at("ok") == false, boost::json::serialize(dd));
  BOOST_TEST(dd.at("error").at("code") == "corrupt", boost::json::serialize(dd));
}

}  // namespace

// Issue 11 #2: garbage in a writable segment reaches no answer. A newline planted in settings
// bytes (with the checksum fixed up to match) does not split a socket answer; a wrong checksum,
// a settings size beyond the arena and a bad name byte are reported as `corrupt` by pkgctl
// settings/dump, the daemon's settings/dump and the C API, never printed.
BOOST_AUTO_TEST_CASE(garbage_in_the_segment_is_reported_corrupt_never_printed) {
  test::DaemonEnv env("bytes");
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  {
    Client c = test::connect(env.sock);
    for (const char* name : {"p", "other"}) {
      auto a = test::call(c, std::string(R"({"op":"update","name":")") + name +
                                 R"(","version":"1","settings":{"a":"xxxxxxxx"}})");
      BOOST_TEST_REQUIRE(a.at("ok") == true, boost::json::serialize(a));
    }
  }
  Tamper t(env.seg, "p");
  const std::string good(t.settings(), t.word(layout::dw::kSettingsLen));
  const std::uint64_t good_sum = t.word(layout::dw::kChecksum);

  // A newline inside the string, checksum recomputed: only the structure check can catch it.
  std::string bad = good;
  bad[bad.find('x')] = '\n';
  std::memcpy(t.settings(), bad.data(), bad.size());
  t.set(layout::dw::kChecksum, checksum_bytes(bad));
  expect_corrupt_everywhere(env, "p", true);

  // Bytes that do not match their checksum.
  bad = good;
  bad[bad.find('x')] = 'y';
  std::memcpy(t.settings(), bad.data(), bad.size());
  t.set(layout::dw::kChecksum, good_sum);
  expect_corrupt_everywhere(env, "p", true);
  std::memcpy(t.settings(), good.data(), good.size());

  // A size beyond the arena (an allocation size and an out-of-bounds read if trusted).
  t.set(layout::dw::kSettingsLen, std::uint64_t{1} << 40);
  expect_corrupt_everywhere(env, "p", false);
  t.set(layout::dw::kSettingsLen, good.size());

  // A name byte outside [A-Za-z0-9._-]: dump must not print it (the lookup of "p" no longer
  // matches it, so this one is for dump only).
  const std::uint64_t name_word = t.word(layout::dw::kName);
  t.set(layout::dw::kName, (name_word & ~std::uint64_t{0xff}) | '\n');
  const Run dump = run_pkgctl(env.seg, {"dump"});
  BOOST_TEST(dump.code != 0, dump.out);
  BOOST_TEST(contains(dump.err, "corrupt"), dump.err);
  Client c = test::connect(env.sock);
  auto dd = test::call(c, R"({"op":"dump","id":4})");
  BOOST_TEST(dd.at("error").at("code") == "corrupt", boost::json::serialize(dd));
  t.set(layout::dw::kName, name_word);
  BOOST_TEST(run_pkgctl(env.seg, {"dump"}).code == 0);  // repaired: readable again
}

// Issue 11 #3: a planted segment of another layout version, 32 GiB sparse, is retired by the
// daemon without writing its pages: the object's allocated size stays what the planter wrote,
// the daemon starts (no SIGBUS), and the one slot that held data was still retired.
BOOST_AUTO_TEST_CASE(retiring_a_planted_sparse_segment_writes_only_its_data) {
  test::DaemonEnv env("sparse");
  const test::SegmentName& seg = env.seg;
  layout::Prefix pre{};
  pre.magic = layout::kMagic;
  pre.layout_version = layout::kLayoutVersion + 1;
  pre.prefix_bytes = sizeof(layout::Prefix);
  pre.epoch = 0x1234;
  pre.capacity = 1u << 26;
  pre.slots_offset = 4096;
  pre.slot_stride = 512;
  pre.root_gen_offset = 0;
  pre.wake_offset = 64;
  pre.gen_count = 1;
  const std::uint64_t size = pre.slots_offset + std::uint64_t{pre.capacity} * pre.slot_stride;
  pre.total_bytes = size;
  const int fd = ::open(test::segment_path(seg).c_str(), O_CREAT | O_EXCL | O_RDWR, 0640);
  BOOST_TEST_REQUIRE(fd >= 0);
  BOOST_TEST_REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  BOOST_TEST_REQUIRE(::pwrite(fd, &pre, sizeof pre, 0) == static_cast<ssize_t>(sizeof pre));
  const std::uint64_t gen = 41, slot5 = pre.slots_offset + 5 * pre.slot_stride;
  BOOST_TEST_REQUIRE(::pwrite(fd, &gen, sizeof gen, static_cast<off_t>(slot5)) == static_cast<ssize_t>(sizeof gen));
  struct stat st {};
  BOOST_TEST_REQUIRE(::fstat(fd, &st) == 0);
  const auto blocks_before = st.st_blocks;

  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(contains(d.stderr_text(), "Retired incompatible segment " + seg.str()), d.stderr_text());
  BOOST_TEST_REQUIRE(::fstat(fd, &st) == 0);
  BOOST_TEST(st.st_blocks == blocks_before);  // no page allocated
  BOOST_TEST(st.st_nlink == 0u);              // unlinked after retirement
  std::uint64_t after = 0;
  BOOST_TEST_REQUIRE(::pread(fd, &after, sizeof after, static_cast<off_t>(slot5)) == static_cast<ssize_t>(sizeof after));
  BOOST_TEST(after == gen + 1);
  ::close(fd);
  BOOST_TEST(d.running());
}

// Issue 11 #8: a token printed from a segment the daemon then retired for its layout version
// reads "cancelled, segment_retired" in a fresh reader (pkgctl check exits 1; the C API agrees),
// not "from another segment".
BOOST_AUTO_TEST_CASE(an_old_token_after_a_version_skew_replacement_reads_segment_retired) {
  test::DaemonEnv env("skew");
  std::string token;
  {
    DaemonProcess d(env.dir, env.opts());
    BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
    Client c = test::connect(env.sock);
    auto a = test::call(c, R"({"op":"update","name":"p","version":"1"})");
    BOOST_TEST_REQUIRE(a.at("ok") == true, boost::json::serialize(a));
    token = std::string(a.at("context").as_string());
    d.signal(SIGTERM);
    BOOST_TEST(d.wait_for(10s).value_or(-1) == 0);
  }
  test::set_layout_version(env.seg, layout::kLayoutVersion + 1);
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(contains(d.stderr_text(), "Retired incompatible segment"), d.stderr_text());

  const Run r = run_pkgctl(env.seg, {"check", token});
  BOOST_TEST(r.code == 1, r.out + r.err);
  BOOST_TEST(contains(r.out, "segment_retired"), r.out);

  pkgctx_worker_t* w = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_attach(env.seg.c_str(), &w) == PKGCTX_OK, pkgctx_last_error());
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token_parse(w, token.c_str(), &t) == PKGCTX_OK, pkgctx_last_error());
  BOOST_TEST(pkgctx_cancelled(t) == 1);
  BOOST_TEST(std::string(pkgctx_cause(t)) == "segment_retired");
  BOOST_TEST(pkgctx_wait(t, 0) == PKGCTX_OK);
  char buf[160];
  BOOST_TEST(pkgctx_token_str(t, buf, sizeof buf) == token.size());
  BOOST_TEST(std::string(buf) == token);  // prints as it was given
  pkgctx_token_free(t);
  pkgctx_detach(w);
}

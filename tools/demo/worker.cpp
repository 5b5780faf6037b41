// pkgctx-demo-worker: a plugin process of the demo (tools/demo.sh), written against the worker
// SDK the way a real plugin would be.
//
// The controller hands it a task's context (--token, as printed by `pkgctl update/event`), or it
// takes the package's current one itself (--event). It reads the package's pending settings when
// the task starts (late binding), then "works" by sleeping on the token for up to --work seconds.
// Cancelled, it reports the cause and the CLOCK_REALTIME instant it woke, so the demo can measure
// the latency from pkgctl sending the change to the worker waking.
//
// Output: "[LABEL] …" lines for people, then one machine-readable line:
//   RESULT finished
//   RESULT cancelled <cause> <woke_realtime_ns>
// Exit: 0 finished, 1 cancelled, 2 usage, 4 cannot attach, 5 bad token or package.
#include "pkgctx/segment.hpp"  // realtime_now_ns: the demo stamps its wake-up like the daemon
#include "pkgctx/token.hpp"    // parse_event: event names as pkgctl spells them
#include "pkgctx/worker.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: pkgctx-demo-worker --segment S --name N --label L (--token T | --event E) [--work SEC]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string segment = "pkgctx", label = "worker", token_text, name, event;
  double work_s = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    const std::string v = argv[++i];
    if (a == "--segment") segment = v;
    else if (a == "--label") label = v;
    else if (a == "--token") token_text = v;
    else if (a == "--name") name = v;
    else if (a == "--event") event = v;
    else if (a == "--work") work_s = std::atof(v.c_str());
    else usage();
  }
  if (name.empty() || token_text.empty() == event.empty() || !(work_s > 0)) usage();
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const char* l = label.c_str();

  // Attach read-only (a daemon that just started may still be creating the segment).
  auto worker = pkgctx::Worker::attach(segment);
  for (int i = 0; !worker && worker.error().code == pkgctx::Errc::segment_not_ready && i < 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    worker = pkgctx::Worker::attach(segment);
  }
  if (!worker) {
    std::fprintf(stderr, "[%s] %s\n", l, worker.error().message.c_str());
    return 4;
  }

  const auto ev = pkgctx::parse_event(event);
  auto token = !token_text.empty() ? worker->parse_token(token_text)
               : ev               ? worker->token(name, *ev)
                                  : pkgctx::Result<pkgctx::Token>(ev.error());
  if (!token) {
    std::fprintf(stderr, "[%s] %s\n", l, token.error().message.c_str());
    return 5;
  }

  // Late binding: the settings are read when the task starts, not when it was scheduled.
  if (auto rec = worker->read(name)) {
    std::printf("[%s] started on %s %s, settings %s\n", l, name.c_str(),
                rec->version.empty() ? "(removed)" : rec->version.c_str(), rec->settings.c_str());
  } else {
    std::printf("[%s] started (%s)\n", l, rec.error().message.c_str());
  }
  std::printf("[%s] working (up to %.0f s) under its %s context\n", l, work_s, token->is_root() ? "root" : "child");

  const bool cancelled =
      token->wait(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(work_s)));
  const std::uint64_t woke = pkgctx::realtime_now_ns();
  if (!cancelled) {
    std::printf("[%s] finished\nRESULT finished\n", l);
    return 0;
  }
  const std::string cause(pkgctx::cause_name(token->cause()));
  std::printf("[%s] cancelled (%s): stopping\nRESULT cancelled %s %llu\n", l, cause.c_str(), cause.c_str(),
              static_cast<unsigned long long>(woke));
  return 1;
}

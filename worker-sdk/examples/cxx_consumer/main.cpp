// cxx_consumer — example_plugin.c's twin in C++20, on pkgctx/worker.hpp, with the work loop on a
// std::stop_token fed by pkgctx::StopBridge. Same arguments, output and exit codes:
//
//   cxx_consumer SEGMENT PACKAGE [EVENT [TIMEOUT_MS]]      (PKGCTX_TOKEN: a handed-over token)
#include <pkgctx/worker.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace {

int fail(const char* what, const pkgctx::Error& e) {
  std::fprintf(stderr, "cxx_consumer: %s: %s: %s\n", what, std::string(pkgctx::errc_name(e.code)).c_str(),
               e.message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::fprintf(stderr, "usage: cxx_consumer SEGMENT PACKAGE [EVENT [TIMEOUT_MS]]\n");
    return 2;
  }
  const std::string segment = argv[1], package = argv[2];
  const int event = argc > 3 ? std::atoi(argv[3]) : pkgctx::kEventUpdate;
  const long long timeout_ms = argc > 4 ? std::atoll(argv[4]) : 10000;

  auto worker = pkgctx::Worker::attach(segment);
  if (!worker) return fail("attach", worker.error());
  auto daemon = worker->daemon();
  if (!daemon) return fail("daemon liveness", daemon.error());
  std::printf("attached segment=%s daemon=%s\n", segment.c_str(),
              std::string(pkgctx::liveness_name(daemon->liveness)).c_str());

  const char* handed = std::getenv("PKGCTX_TOKEN");
  auto token = handed && *handed ? worker->parse_token(handed) : worker->token(package, event);
  if (!token) return fail("token", token.error());
  std::printf("token %s\n", token->str().c_str());

  auto state = worker->read(package);
  if (!state) return fail("read", state.error());
  std::printf("package version=%s checksum=%s settings=%s\n", state->version.c_str(),
              state->checksum_hex.c_str(), state->settings.c_str());

  auto bridge = pkgctx::StopBridge::create(*token);
  if (!bridge) return fail("stop bridge", bridge.error());
  const std::stop_token stop = bridge->get_token();

  std::printf("working\n");
  std::fflush(stdout);
  int units = 0;
  while (units < 20 && !stop.stop_requested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ++units;
  }
  int status = 0;
  if (token->cancelled()) {
    std::printf("cancelled during work after %d units: cause=%s\n", units,
                std::string(pkgctx::cause_name(token->cause())).c_str());
  } else {
    std::printf("waiting\n");
    std::fflush(stdout);
    if (token->wait(std::chrono::milliseconds(timeout_ms))) {
      std::printf("cancelled while waiting: cause=%s\n", std::string(pkgctx::cause_name(token->cause())).c_str());
    } else {
      std::printf("timed out after %lld ms\n", timeout_ms);
      status = 124;
    }
  }
  std::fflush(stdout);
  return status;
}

// controller — a program that embeds pkgctx::core instead of running pkgctxd: it creates a
// segment, publishes a package with the store, takes the store's token and hands its printed
// form to a worker (here the SDK in the same process, as a plugin would in another), then
// cancels it with an event and checks that every view of the context saw it.
//
//   controller SEGMENT        exit 0 and "controller: ok" when everything held
#include <pkgctx/store.hpp>
#include <pkgctx/worker.hpp>

#include <cstdio>
#include <string>

namespace {

int fail(const char* what, const pkgctx::Error& e) {
  std::fprintf(stderr, "controller: %s: %s: %s\n", what, std::string(pkgctx::errc_name(e.code)).c_str(),
               e.message.c_str());
  return 1;
}

int run(const std::string& segment) {
  auto store = pkgctx::Store::create(segment);
  if (!store) return fail("creating the segment", store.error());
  auto settings = pkgctx::Settings::parse(R"({"threads": 4, "mode": "fast"})");
  if (!settings) return fail("settings", settings.error());
  auto updated = store->update("my-plugin", "1.0", *settings);
  if (!updated) return fail("update", updated.error());
  if (!updated->token) return fail("update", pkgctx::make_error(pkgctx::Errc::io_error, "no token for a new package"));
  const pkgctx::core::Token& core_token = *updated->token;

  auto worker = pkgctx::Worker::attach(segment);
  if (!worker) return fail("attach", worker.error());
  auto handed = worker->parse_token(core_token.str());
  if (!handed) return fail("parsing the store's token", handed.error());
  auto state = worker->read("my-plugin");
  if (!state) return fail("read", state.error());
  if (state->version != "1.0" || state->checksum_hex != settings->checksum_hex())
    return fail("read", pkgctx::make_error(pkgctx::Errc::io_error, "the worker reads another state than was written"));
  if (core_token.cancelled() || handed->cancelled())
    return fail("token", pkgctx::make_error(pkgctx::Errc::io_error, "cancelled before any event"));

  auto ev = store->handle_event(pkgctx::kEventUpdate, "my-plugin");
  if (!ev) return fail("event", ev.error());
  if (!core_token.cancelled() || !handed->cancelled() || handed->cause() != pkgctx::Cause::kUpdateEvent)
    return fail("event", pkgctx::make_error(pkgctx::Errc::io_error, "the event did not cancel the context"));
  std::printf("controller: token %s cancelled: %s\n", handed->str().c_str(),
              std::string(pkgctx::cause_name(handed->cause())).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: controller SEGMENT\n");
    return 2;
  }
  const int rc = run(argv[1]);
  pkgctx::Segment::remove(argv[1]);
  if (rc == 0) std::printf("controller: ok\n");
  return rc;
}

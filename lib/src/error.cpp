#include "pkgctx/error.hpp"

#include <stdexcept>

namespace pkgctx {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "pkgctx"; }
  std::string message(int ev) const override { return std::string(errc_name(static_cast<Errc>(ev))); }
};

}  // namespace

const std::error_category& error_category() noexcept {
  static const Category c;
  return c;
}

std::string_view errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::ok: return "ok";
    case Errc::invalid_name: return "invalid_name";
    case Errc::invalid_version: return "invalid_version";
    case Errc::invalid_settings: return "invalid_settings";
    case Errc::settings_too_large: return "settings_too_large";
    case Errc::invalid_event: return "invalid_event";
    case Errc::invalid_token: return "invalid_token";
    case Errc::no_such_package: return "no_such_package";
    case Errc::table_full: return "table_full";
    case Errc::settings_full: return "settings_full";
    case Errc::segment_missing: return "segment_missing";
    case Errc::segment_foreign: return "segment_foreign";
    case Errc::segment_version: return "segment_version";
    case Errc::segment_truncated: return "segment_truncated";
    case Errc::segment_not_ready: return "segment_not_ready";
    case Errc::segment_retired: return "segment_retired";
    case Errc::segment_exists: return "segment_exists";
    case Errc::permission_denied: return "permission_denied";
    case Errc::timed_out: return "timed_out";
    case Errc::io_error: return "io_error";
    case Errc::daemon_unreachable: return "daemon_unreachable";
    case Errc::busy: return "busy";
  }
  return "unknown";
}

void throw_exception_from_error(const Error& e, const boost::source_location&) {
  throw std::system_error(make_error_code(e.code), e.message);
}

}  // namespace pkgctx

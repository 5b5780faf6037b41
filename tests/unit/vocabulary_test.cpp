// The one home of each shared concept: the error table (names, descriptions, classes), event
// parsing and its message, segment names, and the token text format.
#define BOOST_TEST_MODULE vocabulary
#include <boost/test/unit_test.hpp>

#include "pkgctx/error_class.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <string>

using namespace pkgctx;

namespace {
constexpr int kCodes[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30, 31, 32, 33};
}

BOOST_AUTO_TEST_CASE(every_code_has_one_row) {
  for (const int code : kCodes) {
    const auto e = static_cast<Errc>(code);
    const std::string name(errc_name(e));
    BOOST_TEST(name != "unknown", code);
    BOOST_TEST(std::string(errc_description(e)) != "unknown pkgctx error code", code);
    BOOST_TEST((errc_from_name(name) == std::optional<Errc>(e)), name);
    BOOST_TEST((error_class(e) == ErrorClass::ok) == (e == Errc::ok), name);
  }
  BOOST_TEST(errc_name(static_cast<Errc>(9)) == "unknown");
  BOOST_TEST(!errc_from_name("bad_request").has_value());  // a protocol code, not a core one
  BOOST_TEST((error_class(Errc::no_such_package) == ErrorClass::missing));
  BOOST_TEST((error_class(Errc::invalid_token) == ErrorClass::rejected));
  BOOST_TEST((error_class(Errc::busy) == ErrorClass::unavailable));
}

BOOST_AUTO_TEST_CASE(events_parse_in_one_place_with_one_message) {
  BOOST_TEST(parse_event("update").value() == kEventUpdate);
  BOOST_TEST(parse_event("remove").value() == kEventRemove);
  BOOST_TEST(parse_event("schedule").value() == kEventSchedule);
  BOOST_TEST(parse_event("7").value() == 7);
  for (const char* bad : {"8", "", "Update", "07", "-1", "schedule "}) {
    auto r = parse_event(bad);
    BOOST_REQUIRE(r.has_error());
    BOOST_TEST((r.error().code == Errc::invalid_event));
    BOOST_TEST(r.error().message == "event \"" + std::string(bad) + "\" is not update (0), remove (1), schedule or a child key 2..7 (schedule is 2)");
  }
  BOOST_TEST(validate_event(0).value() == 0);
  BOOST_TEST(validate_event(-1).error().message == "event -1 is not update (0), remove (1), schedule or a child key 2..7 (schedule is 2)");
  BOOST_TEST(validate_event(8).has_error());
}

BOOST_AUTO_TEST_CASE(segment_names_have_one_rule) {
  BOOST_TEST(!validate_segment_name("pkgctx").has_error());
  BOOST_TEST(!validate_segment_name(std::string(200, 's')).has_error());
  for (const std::string& bad : {std::string(), std::string(201, 's'), std::string("a/b"), std::string(".hidden"),
                                std::string("a b"), std::string("a\0b", 3)}) {
    auto r = validate_segment_name(bad);
    BOOST_REQUIRE(r.has_error());
    BOOST_TEST((r.error().code == Errc::invalid_name));
    BOOST_TEST(r.error().message.find("is not a segment name") != std::string::npos, r.error().message);
    // The rule is enforced where a segment is opened or created.
    BOOST_TEST((Segment::open(bad, Access::read_only).error().code == Errc::invalid_name));
    BOOST_TEST((Segment::create(bad).error().code == Errc::invalid_name));
  }
}

BOOST_AUTO_TEST_CASE(token_text_is_parsed_in_one_place) {
  test::SegmentName n;
  auto store = Store::create(n).value();
  auto up = store.update("pkg", "1", Settings()).value();
  const std::string text = up.token->str();
  auto f = parse_token_text(text);
  BOOST_REQUIRE(f.has_value());
  BOOST_TEST(f->epoch == store.segment().header().prefix.epoch);
  BOOST_TEST(f->slot == up.token->slot());
  BOOST_TEST(f->key == 0u);
  BOOST_TEST(f->root == up.token->root_generation());
  BOOST_TEST(f->child == 0u);
  // Syntax and check digits need no segment; everything else does (core::Token::parse).
  std::string forged = text;
  forged.back() = forged.back() == '0' ? '1' : '0';
  BOOST_TEST(parse_token_text(forged).error().message.find("check digits do not match") != std::string::npos);
  BOOST_TEST(parse_token_text("pkgctx1:none").has_error());
  // A token pasted with a trailing space or newline says so, not "check digits are not hex".
  for (const char* tail : {" ", "\n", " \r\n"}) {
    const auto r = parse_token_text(text + tail);
    BOOST_TEST(r.error().message.find("ends in whitespace") != std::string::npos, r.error().message);
  }
  const auto inner = parse_token_text(text.substr(0, 10) + " " + text.substr(11));
  BOOST_TEST(inner.error().message.find("character 11 is not one of [A-Za-z0-9._:-]") != std::string::npos,
             inner.error().message);
}

// The wire-only codes have a class in the same table, and the fixes it suggests name what the
// caller used.
BOOST_AUTO_TEST_CASE(wire_codes_and_hints_come_from_the_one_table) {
  BOOST_TEST((error_class(std::string_view("no_such_package")) == ErrorClass::missing));
  BOOST_TEST((error_class(std::string_view("bad_request")) == ErrorClass::rejected));
  BOOST_TEST((error_class(std::string_view("line_too_long")) == ErrorClass::rejected));
  BOOST_TEST((error_class(std::string_view("wrong_segment")) == ErrorClass::rejected));
  BOOST_TEST((error_class(std::string_view("forbidden")) == ErrorClass::forbidden));
  BOOST_TEST((error_class(std::string_view("outcome_unknown")) == ErrorClass::outcome_unknown));
  BOOST_TEST((error_class(std::string_view("too_many_clients")) == ErrorClass::unavailable));
  BOOST_TEST((error_class(std::string_view("made_up")) == ErrorClass::unavailable));
  const HintContext where{"web", "/run/x.sock"};
  BOOST_TEST(error_hint("segment_missing", where) == "is pkgctxd running with --segment web?");
  BOOST_TEST(error_hint("daemon_unreachable", where) == "is pkgctxd running? try --socket");
  BOOST_TEST(error_hint("wrong_segment", where) ==
             "use --socket of the daemon that serves web, or --segment of the daemon at /run/x.sock");
  BOOST_TEST(error_hint("invalid_name", where).empty());
}

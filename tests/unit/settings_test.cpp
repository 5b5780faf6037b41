// Settings: RFC 8785 canonical form, checksums, and the input limits of DESIGN.md §3.
#define BOOST_TEST_MODULE settings
#include <boost/test/unit_test.hpp>

#include "pkgctx/settings.hpp"
#include "test_support.hpp"

#include <xxhash.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace pkgctx;
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Canonical form of `json`, or "ERROR: <message>" so a failure shows up in the comparison.
std::string canon(std::string_view json, const Limits& limits = {}) {
  auto r = canonicalize_json(json, limits);
  return r ? *r : "ERROR: " + r.error().message;
}

Errc canon_error(std::string_view json, const Limits& limits = {}) {
  auto r = canonicalize_json(json, limits);
  return r ? Errc::ok : r.error().code;
}

Errc parse_error(std::string_view json, const Limits& limits = {}) {
  auto r = Settings::parse(json, limits);
  return r ? Errc::ok : r.error().code;
}

}  // namespace

namespace pkgctx {
// Lets BOOST_TEST print Errc values (found by ADL).
std::ostream& boost_test_print_type(std::ostream& os, Errc e) { return os << errc_name(e); }
}  // namespace pkgctx

BOOST_AUTO_TEST_SUITE(canonical_form)

BOOST_AUTO_TEST_CASE(rfc8785_vectors) {
  const std::string shared = pkgctx::test::shared_testdata();
  const fs::path dir = shared.empty() ? fs::path() : fs::path(shared) / "jcs";
  if (shared.empty() || !fs::is_directory(dir / "input")) {
    BOOST_TEST_MESSAGE("shared JCS test vectors not found; skipping");
    return;
  }
  int count = 0;
  for (const auto& entry : fs::directory_iterator(dir / "input")) {
    if (entry.path().extension() != ".json") continue;
    BOOST_TEST_CONTEXT("vector " << entry.path().filename()) {
      const std::string expected = read_file(dir / "output" / entry.path().filename());
      BOOST_TEST(canon(read_file(entry.path())) == expected);
    }
    ++count;
  }
  BOOST_TEST(count > 0);
}

BOOST_AUTO_TEST_CASE(numbers) {
  BOOST_TEST(canon("0") == "0");
  BOOST_TEST(canon("-0") == "0");
  BOOST_TEST(canon("-0.0e5") == "0");
  BOOST_TEST(canon("1E2") == "100");
  BOOST_TEST(canon("1.5e1") == "15");
  BOOST_TEST(canon("56.0") == "56");
  BOOST_TEST(canon("-12.5") == "-12.5");
  BOOST_TEST(canon("1e20") == "100000000000000000000");
  BOOST_TEST(canon("1e21") == "1e+21");
  BOOST_TEST(canon("-1.5e21") == "-1.5e+21");
  BOOST_TEST(canon("123456789012345680000") == "123456789012345680000");
  BOOST_TEST(canon("0.000001") == "0.000001");
  BOOST_TEST(canon("1e-7") == "1e-7");
  BOOST_TEST(canon("1.25e-7") == "1.25e-7");
  BOOST_TEST(canon("5e-324") == "5e-324");
  BOOST_TEST(canon("2.4703282292062328e-324") == "5e-324");  // rounds up to the smallest subnormal
  BOOST_TEST(canon("1e-400") == "0");                        // underflows to 0, as in JS
  BOOST_TEST(canon("-1e-400") == "0");
  BOOST_TEST(canon("1.7976931348623157e308") == "1.7976931348623157e+308");
  BOOST_TEST(canon("2.2250738585072011e-308") == "2.225073858507201e-308");
  BOOST_TEST(canon("0.30000000000000004") == "0.30000000000000004");
  BOOST_TEST(canon("0.1") == "0.1");
  BOOST_TEST(canon("9007199254740992") == "9007199254740992");
  BOOST_TEST(canon("9007199254740993") == "9007199254740992");  // 2^53+1 is not a double
  BOOST_TEST(canon("18446744073709551616") == "18446744073709552000");
  BOOST_TEST(canon("-9223372036854775808") == "-9223372036854776000");
  BOOST_TEST(canon("333333333.33333329") == "333333333.3333333");
  BOOST_TEST(canon("[1,2.50,3e0]") == "[1,2.5,3]");
}

BOOST_AUTO_TEST_CASE(literals_and_whitespace) {
  BOOST_TEST(canon(" \t\r\n{ \"a\" : [ true , false , null ] , \"b\" : { } , \"c\" : [ ] } \n") ==
             R"({"a":[true,false,null],"b":{},"c":[]})");
  BOOST_TEST(canon("[]") == "[]");
  BOOST_TEST(canon("{}") == "{}");
  BOOST_TEST(canon("null") == "null");
  BOOST_TEST(canon(R"("x")") == R"("x")");
}

BOOST_AUTO_TEST_CASE(string_escapes) {
  BOOST_TEST(canon(R"(["\u0000\u0001\u001f"])") == R"(["\u0000\u0001\u001f"])");
  BOOST_TEST(canon(R"(["\u0008\u0009\u000a\u000c\u000d"])") == R"(["\b\t\n\f\r"])");
  BOOST_TEST(canon(R"(["\u000B\u001F"])") == R"(["\u000b\u001f"])");  // lowercase hex
  BOOST_TEST(canon(R"(["\"\\\/"])") == R"(["\"\\/"])");               // '/' is not escaped
  BOOST_TEST(canon(R"(["\u007f"])") == "[\"\x7f\"]");                   // DEL is literal
  BOOST_TEST(canon(R"(["\u2028\u2029"])") == "[\"\u2028\u2029\"]");     // literal, unlike JS source
  BOOST_TEST(canon(R"(["\u00e9", "é"])") == "[\"\xc3\xa9\",\"\xc3\xa9\"]");
  BOOST_TEST(canon(R"(["\ud83d\ude00"])") == "[\"\xf0\x9f\x98\x80\"]");  // surrogate pair → UTF-8
  BOOST_TEST(canon(R"(["\uD83D\uDE00"])") == "[\"\xf0\x9f\x98\x80\"]");
  BOOST_TEST(canon("[\"\xf0\x9f\x98\x80\"]") == "[\"\xf0\x9f\x98\x80\"]");
  BOOST_TEST(canon(R"({"\n\u0001":"\t"})") == R"({"\n\u0001":"\t"})");  // keys are escaped too
}

BOOST_AUTO_TEST_CASE(key_order_is_utf16) {
  // U+1F600 is D83D DE00 in UTF-16, which sorts before U+E000 (and U+FFFF), although its UTF-8
  // bytes (F0 ...) sort after EE 80 80.
  BOOST_TEST(canon(R"({"\uE000":1,"\ud83d\ude00":2})") == "{\"\xf0\x9f\x98\x80\":2,\"\xee\x80\x80\":1}");
  BOOST_TEST(canon(R"({"\uffff":1,"\ud800\udc00":2,"\ud7ff":3})") ==
             "{\"\xed\x9f\xbf\":3,\"\xf0\x90\x80\x80\":2,\"\xef\xbf\xbf\":1}");
  // Prefixes first; plain code unit order otherwise (no locale, no normalisation).
  BOOST_TEST(canon(R"({"ab":1,"a":2,"b":3,"B":4,"":5,"\u00e9":6,"e":7})") ==
             "{\"\":5,\"B\":4,\"a\":2,\"ab\":1,\"b\":3,\"e\":7,\"\xc3\xa9\":6}");
  // The difference hides behind a common prefix.
  BOOST_TEST(canon(R"({"x\uE000":1,"x\ud83d\ude00":2})") ==
             "{\"x\xf0\x9f\x98\x80\":2,\"x\xee\x80\x80\":1}");
}

BOOST_AUTO_TEST_CASE(nesting) {
  BOOST_TEST(canon(R"({"b":{"z":[{"y":1,"x":[2,{"d":0,"c":1}]}],"a":null},"a":[[],[[]],{}]})") ==
             R"({"a":[[],[[]],{}],"b":{"a":null,"z":[{"x":[2,{"c":1,"d":0}],"y":1}]}})");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(settings)

BOOST_AUTO_TEST_CASE(default_is_empty_object) {
  const Settings s;
  BOOST_TEST(s.canonical() == "{}");
  BOOST_TEST(s.empty());
  BOOST_TEST(s.checksum() == XXH3_64bits("{}", 2));
  auto parsed = Settings::parse(" { } ");
  BOOST_REQUIRE(parsed);
  BOOST_TEST((*parsed == s));
}

BOOST_AUTO_TEST_CASE(checksum_format) {
  const Settings s;
  const std::string hex = s.checksum_hex();
  BOOST_TEST(hex.size() == 16u);
  BOOST_TEST(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
  char expected[17];
  std::snprintf(expected, sizeof expected, "%016llx", static_cast<unsigned long long>(XXH3_64bits("{}", 2)));
  BOOST_TEST(hex == expected);
  BOOST_TEST(Settings::format_checksum(0) == "0000000000000000");
  BOOST_TEST(Settings::format_checksum(0xabc) == "0000000000000abc");
  BOOST_TEST(Settings::format_checksum(~0ull) == "ffffffffffffffff");
  BOOST_TEST(checksum_bytes("{}") == s.checksum());
}

BOOST_AUTO_TEST_CASE(checksum_round_trip) {
  for (std::uint64_t v : {0ull, 1ull, 0x0123456789abcdefull, ~0ull}) {
    auto r = parse_checksum(Settings::format_checksum(v));
    BOOST_REQUIRE(r);
    BOOST_TEST(*r == v);
  }
  auto upper = parse_checksum("0123456789ABCDEF");
  BOOST_REQUIRE(upper);
  BOOST_TEST(*upper == 0x0123456789abcdefull);
}

BOOST_AUTO_TEST_CASE(checksum_ignores_spelling) {
  auto a = Settings::parse(R"({"b":[1,2,{"y":"\u0041","x":100}],"a":true})");
  auto b = Settings::parse("{ \"a\" : true,\n \"b\" : [ 1.0, 2e0, { \"x\": 1E2, \"y\": \"A\" } ] }");
  BOOST_REQUIRE(a);
  BOOST_REQUIRE(b);
  BOOST_TEST(a->canonical() == b->canonical());
  BOOST_TEST(a->checksum() == b->checksum());
  BOOST_TEST((*a == *b));
  BOOST_TEST(a->checksum() == checksum_bytes(a->canonical()));
  BOOST_TEST(!a->empty());
}

BOOST_AUTO_TEST_CASE(checksum_tracks_values) {
  const std::vector<std::string> inputs = {
      R"({})", R"({"a":1})", R"({"a":2})", R"({"a":"1"})", R"({"b":1})", R"({"a":[1]})", R"({"a":null})",
  };
  std::vector<std::uint64_t> sums;
  for (const auto& in : inputs) {
    auto s = Settings::parse(in);
    BOOST_REQUIRE(s);
    for (auto other : sums) BOOST_TEST(s->checksum() != other, in);
    sums.push_back(s->checksum());
  }
}

BOOST_AUTO_TEST_CASE(from_canonical_wraps) {
  auto s = Settings::from_canonical(R"({"a":1})", 42);
  BOOST_TEST(s.canonical() == R"({"a":1})");
  BOOST_TEST(s.checksum() == 42u);
  BOOST_TEST(s.checksum_hex() == "000000000000002a");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(rejected)

BOOST_AUTO_TEST_CASE(settings_must_be_an_object) {
  for (const char* in : {"[]", "1", "\"x\"", "true", "null", "[{}]"}) {
    BOOST_TEST(parse_error(in) == Errc::invalid_settings, in);
    BOOST_TEST(canon_error(in) == Errc::ok, in);  // any value canonicalises
  }
  auto r = Settings::parse("[1]");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("array") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_CASE(malformed_json) {
  for (const char* in : {"", "   ", "{", R"({"a":)", R"({"a":1)", R"({"a")", R"(["abc)", "[1,]", R"({"a":1,})",
                         "{} x", "{}{}", "[1] 2", "{'a':1}", "{a:1}", "[01]", "[1.]", "[.5]", "[+1]", "[NaN]",
                         "[Infinity]", "[-Infinity]", "[1e]", "[\"\\x41\"]", "[\"a\tb\"]", "/*c*/{}", "[true false]",
                         "\xef\xbb\xbf{}" /* BOM */}) {
    BOOST_TEST(parse_error(in) == Errc::invalid_settings, in);
  }
  auto r = Settings::parse(R"({"a":1} x)");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("byte 8") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_CASE(duplicate_keys) {
  BOOST_TEST(parse_error(R"({"a":1,"a":2})") == Errc::invalid_settings);
  BOOST_TEST(parse_error(R"({"a":1,"b":2,"a":1})") == Errc::invalid_settings);
  BOOST_TEST(parse_error(R"({"x":{"a":1,"\u0061":2}})") == Errc::invalid_settings);  // same key, spelt apart
  BOOST_TEST(parse_error(R"({"x":[{"k":1},{"k":2,"k":3}]})") == Errc::invalid_settings);
  BOOST_TEST(parse_error(R"({"a":{"a":1}})") == Errc::ok);  // same key at different levels is fine
  auto r = Settings::parse(R"({"dup":1,"dup":2})");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("duplicate key \"dup\"") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_CASE(bad_unicode) {
  for (const char* in : {R"({"a":"\ud800"})", R"({"a":"\udc00"})", R"({"a":"\ud800x"})", R"({"a":"\ud800\u0041"})",
                         R"({"a":"\ude00\ud83d"})", R"({"\ud800":1})", R"({"a":"\uD800"})"}) {
    BOOST_TEST(parse_error(in) == Errc::invalid_settings, in);
  }
  for (const char* in : {"{\"a\":\"\xff\"}", "{\"a\":\"\xc3\"}", "{\"a\":\"\xc3(\"}", "{\"a\":\"\xed\xa0\x80\"}",
                         "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xf4\x90\x80\x80\"}", "{\"\x80\":1}"}) {
    BOOST_TEST(parse_error(in) == Errc::invalid_settings, in);
  }
  auto r = Settings::parse(R"({"a":"\ud800"})");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("surrogate") != std::string::npos, r.error().message);
  r = Settings::parse("{\"a\":\"\xff\"}");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("UTF-8") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_CASE(numbers_beyond_double) {
  const std::string long_literal = "{\"a\":1" + std::string(309, '0') + "}";  // 1e309, spelt out
  BOOST_TEST(parse_error(long_literal) == Errc::invalid_settings);
  for (const char* in : {R"({"a":1e400})", R"({"a":-1e400})", R"({"a":1.7976931348623159e308})",
                         R"({"a":1e99999999999})"}) {
    BOOST_TEST(parse_error(in) == Errc::invalid_settings, in);
  }
}

BOOST_AUTO_TEST_CASE(too_deep) {
  Limits limits;
  limits.max_depth = 3;
  BOOST_TEST(parse_error(R"({"a":{"b":[]}})", limits) == Errc::ok);
  BOOST_TEST(parse_error(R"({"a":{"b":[[]]}})", limits) == Errc::invalid_settings);
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  BOOST_TEST(canon_error(deep) == Errc::invalid_settings);  // default limit is 64
  const std::string ok = std::string(64, '[') + std::string(64, ']');
  BOOST_TEST(canon_error(ok) == Errc::ok);
}

BOOST_AUTO_TEST_CASE(too_large) {
  Limits limits;
  limits.max_settings = 10;
  BOOST_TEST(parse_error(R"({"a":"12"})", limits) == Errc::ok);  // exactly 10 canonical bytes
  BOOST_TEST(parse_error(R"({"a":"123"})", limits) == Errc::settings_too_large);
  // The limit is on the canonical size, not the input size.
  BOOST_TEST(parse_error("{   \"a\"  :  \"12\"   }", limits) == Errc::ok);
  BOOST_TEST(parse_error(R"({"a":1e9})", limits) == Errc::settings_too_large);  // 1000000000
  auto r = Settings::parse(R"({"a":[1,2,3,4,5,{"b":"cd","e":[true]}]})", limits);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::settings_too_large);
  const std::string msg = r.error().message;
  BOOST_TEST(msg.find("39") != std::string::npos, msg);  // the exact canonical size …
  BOOST_TEST(msg.find("10") != std::string::npos, msg);  // … and the limit
  // Malformed input stays invalid even once the size limit has been passed.
  BOOST_TEST(parse_error(R"({"a":"12345678901234567890",)", limits) == Errc::invalid_settings);
  // The default limit is 1 MiB of canonical text.
  const std::string big = "{\"a\":\"" + std::string(1024 * 1024, 'x') + "\"}";
  BOOST_TEST(parse_error(big) == Errc::settings_too_large);
  const std::string fits = "{\"a\":\"" + std::string(1024 * 1024 - 8, 'x') + "\"}";
  BOOST_TEST(parse_error(fits) == Errc::ok);
}

BOOST_AUTO_TEST_CASE(checksum_text) {
  for (const char* in : {"", "0", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", " 123456789abcdef",
                         "0x23456789abcdef", "-123456789abcdef", "0123456789abcde\n"}) {
    auto r = parse_checksum(in);
    BOOST_TEST(!r, in);
    if (!r) BOOST_TEST(r.error().code == Errc::invalid_settings);
  }
  auto r = parse_checksum("0123456789abcdeg");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().message.find("0123456789abcdeg") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(validation)

BOOST_AUTO_TEST_CASE(good_names) {
  for (const char* in : {"a", "nginx", "my-pkg_1.2", "A.B-C_D", "...", ".hidden", "-", "0"}) {
    BOOST_TEST(!validate_name(in).has_error(), in);
  }
  BOOST_TEST(!validate_name(std::string(128, 'n')).has_error());
}

BOOST_AUTO_TEST_CASE(bad_names) {
  const std::vector<std::string> bad = {"", std::string(129, 'n'), "a b", "a/b", "caf\xc3\xa9", ".", "..",
                                        "a\nb", std::string("a\0b", 3), "a:b", "a*"};
  for (const auto& in : bad) {
    auto r = validate_name(in);
    BOOST_TEST(r.has_error(), in);
    if (r.has_error()) BOOST_TEST(r.error().code == Errc::invalid_name);
  }
  auto r = validate_name("a b");
  BOOST_REQUIRE(r.has_error());
  BOOST_TEST(r.error().message == "name \"a b\": byte ' ' at 1 is not allowed (use [A-Za-z0-9._-])");
  r = validate_name("ab\xc3\xa9");
  BOOST_REQUIRE(r.has_error());
  BOOST_TEST(r.error().message.find("byte \\xc3 at 2") != std::string::npos, r.error().message);
  Limits limits;
  limits.max_name = 3;
  BOOST_TEST(!validate_name("abc", limits).has_error());
  BOOST_TEST(validate_name("abcd", limits).has_error());
}

BOOST_AUTO_TEST_CASE(good_versions) {
  for (const char* in : {"1", "1.2.3", "v1.0.0-rc.1+build 5", " ", "~!@#$%^&*()[]{}\"'\\|<>?/"}) {
    BOOST_TEST(!validate_version(in).has_error(), in);
  }
  BOOST_TEST(!validate_version(std::string(128, '9')).has_error());
}

BOOST_AUTO_TEST_CASE(bad_versions) {
  const std::vector<std::string> bad = {"", std::string(129, '9'), "1.0\n", "1\t0", "1.0\x7f", "1.0-\xc3\xa9",
                                        std::string("1\0", 2)};
  for (const auto& in : bad) {
    auto r = validate_version(in);
    BOOST_TEST(r.has_error(), in);
    if (r.has_error()) BOOST_TEST(r.error().code == Errc::invalid_version);
  }
  auto r = validate_version("");
  BOOST_REQUIRE(r.has_error());
  BOOST_TEST(r.error().message.find("removed") != std::string::npos, r.error().message);
  r = validate_version("1.0\x01");
  BOOST_REQUIRE(r.has_error());
  BOOST_TEST(r.error().message.find("byte \\x01 at 3") != std::string::npos, r.error().message);
}

BOOST_AUTO_TEST_SUITE_END()

// Settings checksums that other languages match (DESIGN.md §3): the shipped conformance vectors,
// and RFC 8785 number canonicalisation checked against an independent oracle on many generated
// literals (near-halfway cases, long mantissas, exponents at the edges, -0, integers past 2^53).
#define BOOST_TEST_MODULE jcs
#include <boost/test/unit_test.hpp>

#include "jcs_vectors.hpp"
#include "pkgctx/settings.hpp"

#include <xxhash.h>

#include <array>
#include <bit>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace pkgctx;

namespace {

std::string canon(std::string_view json) {
  auto r = canonicalize_json(json);
  return r ? *r : "ERROR: " + r.error().message;
}

// --- the oracle ------------------------------------------------------------------------------
// The double is std::from_chars on the whole literal (correctly rounded). The text is ECMAScript
// Number::toString (ECMA-262 §6.1.6.1.20) written from its definition: the digits s (k of them)
// and n such that the value is s × 10^(n−k), k as small as possible, then the four layout cases.
// The digits come from std::to_chars (shortest round trip), and are cross-checked against glibc printf rounding to k digits: the spec wants, among the shortest
// strings, the one closest to the value, which is the correctly rounded one.

struct Decimal {
  bool negative = false;
  std::string digits;  // s: no leading or trailing zeros
  int n = 0;           // value = 0.digits × 10^n
};

Decimal shortest_digits(double v) {
  // Scientific, because the plain form spells large integers out in full (1e21+131072 as
  // 1000000000000000131072), which are not the shortest digits.
  std::array<char, 64> buf;
  const auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v, std::chars_format::scientific);
  std::string text(buf.data(), res.ptr);  // -?d[.ddd]e±dd
  Decimal d;
  if (text.front() == '-') {
    d.negative = true;
    text.erase(0, 1);
  }
  const auto e = text.find('e');
  d.n = std::stoi(text.substr(e + 1)) + 1;
  for (char c : text.substr(0, e))
    if (c != '.') d.digits += c;
  d.digits.erase(d.digits.find_last_not_of('0') + 1);
  return d;
}

std::string es_number_to_string(double v) {
  if (v == 0) return "0";  // ECMAScript: +0 and -0 both give "0"
  const Decimal d = shortest_digits(v);
  const int k = static_cast<int>(d.digits.size());
  const int n = d.n;
  // Cross-check: printf rounding |v| to k significant digits yields the same digits.
  std::array<char, 64> p;
  std::snprintf(p.data(), p.size(), "%.*e", k - 1, std::fabs(v));
  std::string pd;
  for (const char* c = p.data(); *c && *c != 'e'; ++c)
    if (*c != '.') pd += *c;
  BOOST_TEST_REQUIRE(pd == d.digits, "oracle digits for " << p.data());

  std::string out = d.negative ? "-" : "";
  if (k <= n && n <= 21) {  // integer: s followed by n−k zeros
    out += d.digits + std::string(static_cast<std::size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {  // decimal point inside s
    out += d.digits.substr(0, static_cast<std::size_t>(n)) + "." + d.digits.substr(static_cast<std::size_t>(n));
  } else if (-6 < n && n <= 0) {  // 0.000s
    out += "0." + std::string(static_cast<std::size_t>(-n), '0') + d.digits;
  } else {  // exponential: d[.ddd]e±(n−1)
    out += d.digits.substr(0, 1);
    if (k > 1) out += "." + d.digits.substr(1);
    out += "e";
    out += n - 1 >= 0 ? "+" : "-";
    out += std::to_string(std::abs(n - 1));
  }
  return out;
}

// What the oracle expects for a literal: its ES text, or "" when the literal is out of a double's
// range upwards (rejected), "0" when it underflows (JS rounds it to 0).
std::string expected_for(const std::string& literal) {
  double v = 0;
  const auto res = std::from_chars(literal.data(), literal.data() + literal.size(), v);
  BOOST_TEST_REQUIRE((res.ptr == literal.data() + literal.size()), "oracle cannot read " << literal);
  if (res.ec == std::errc::result_out_of_range) {
    // from_chars leaves v alone then; strtod says which way: ±HUGE_VAL over, 0 under.
    return std::isinf(std::strtod(literal.c_str(), nullptr)) ? "" : "0";
  }
  BOOST_TEST_REQUIRE((res.ec == std::errc()), "oracle cannot read " << literal);
  return es_number_to_string(v);
}

// Exact decimal value of a long double, all digits (x87 long double holds the midpoint of two
// adjacent doubles exactly, so this spells halfway cases out in full).
std::string exact(long double x) {
  std::vector<char> buf(2000);
  const int len = std::snprintf(buf.data(), buf.size(), "%.1100Le", x);
  std::string s(buf.data(), static_cast<std::size_t>(len));
  const auto e = s.find('e');
  std::string mant = s.substr(0, e);
  mant.erase(mant.find_last_not_of('0') + 1);
  if (mant.back() == '.') mant.pop_back();
  return mant + s.substr(e);
}

std::string shortest(double v) {
  std::array<char, 64> buf;
  return std::string(buf.data(), std::to_chars(buf.data(), buf.data() + buf.size(), v).ptr);
}

std::string printf_e(const char* fmt, double v) {
  std::array<char, 64> buf;
  std::snprintf(buf.data(), buf.size(), fmt, v);
  return buf.data();
}

// Checks one literal in three positions: alone, as an object member, and in a long array (Boost
// reads numbers through a different path when 33 or more bytes follow).
void check_literal(const std::string& literal) {
  const std::string want = expected_for(literal);
  BOOST_TEST_CONTEXT("literal " << literal) {
    if (want.empty()) {
      auto r = canonicalize_json("{\"n\":" + literal + "}");
      BOOST_TEST(!r);
      if (!r) BOOST_TEST(r.error().code == Errc::invalid_settings);
      return;
    }
    BOOST_TEST(canon(literal) == want);
    BOOST_TEST(canon("{\"n\":" + literal + "}") == "{\"n\":" + want + "}");
    BOOST_TEST(canon("[" + literal + "," + literal + "                                  ]") ==
               "[" + want + "," + want + "]");
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(conformance_vectors)

BOOST_AUTO_TEST_CASE(library_matches_every_vector) {
  const auto vectors = test::load_jcs_vectors();
  for (const auto& v : vectors) {
    BOOST_TEST_CONTEXT("vector \"" << v.name << "\"") {
      auto s = Settings::parse(v.input);
      if (!v.error.empty()) {
        BOOST_TEST(!s);
        if (!s) BOOST_TEST(errc_name(s.error().code) == v.error);
        continue;
      }
      BOOST_TEST_REQUIRE(s.has_value(), (s ? std::string() : s.error().message));
      BOOST_TEST(s->canonical() == v.canonical);
      BOOST_TEST(s->checksum_hex() == v.checksum);
      // The vector's checksum is XXH3-64 of its canonical bytes, computed here directly.
      BOOST_TEST(Settings::format_checksum(XXH3_64bits(v.canonical.data(), v.canonical.size())) == v.checksum);
      // Canonical text is a fixed point.
      BOOST_TEST(canon(v.canonical) == v.canonical);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(generated_numbers)

// The oracle itself, on RFC 8785 Appendix B values and the ES layout boundaries.
BOOST_AUTO_TEST_CASE(oracle_knows_the_published_answers) {
  BOOST_TEST(expected_for("123456789012345678901") == "123456789012345680000");
  BOOST_TEST(expected_for("295147905179352825856") == "295147905179352830000");
  BOOST_TEST(expected_for("1e23") == "1e+23");
  BOOST_TEST(expected_for("9.999999999999997e-7") == "9.999999999999997e-7");
  BOOST_TEST(expected_for("0.000001") == "0.000001");
  BOOST_TEST(expected_for("-0.0000033333333333333333") == "-0.0000033333333333333333");
  BOOST_TEST(expected_for("1424953923781206.2") == "1424953923781206.2");
  BOOST_TEST(expected_for("333333333.33333329") == "333333333.3333333");
  BOOST_TEST(expected_for("999999999999999900000") == "999999999999999900000");
  BOOST_TEST(expected_for("5e-324") == "5e-324");
  BOOST_TEST(expected_for("1e-400") == "0");
  BOOST_TEST(expected_for("1e400").empty());
}

BOOST_AUTO_TEST_CASE(long_integers_and_mantissas) {
  std::mt19937_64 rng(13);
  for (int i = 0; i < 3000; ++i) {
    const int len = 16 + static_cast<int>(rng() % 50);  // 16..65 significant digits
    std::string s(1, static_cast<char>('1' + rng() % 9));
    while (static_cast<int>(s.size()) < len) s += static_cast<char>('0' + rng() % 10);
    switch (i % 4) {
      case 0: break;  // an integer, mostly beyond 2^53
      case 1: s.insert(1 + rng() % (s.size() - 1), "."); break;
      case 2: s = "0." + std::string(rng() % 8, '0') + s; break;
      case 3: s += "e" + std::to_string(static_cast<int>(rng() % 700) - 350); break;
    }
    if (rng() % 2) s.insert(0, "-");
    check_literal(s);
  }
}

// Every exponent: random bit patterns of finite doubles (subnormals included), each written
// shortest, with 17 digits, and as its exact decimal value.
BOOST_AUTO_TEST_CASE(random_doubles_spelt_three_ways) {
  std::mt19937_64 rng(8785);
  for (int i = 0; i < 2000; ++i) {
    const std::uint64_t bits = rng();
    double v;
    std::memcpy(&v, &bits, sizeof v);
    if (!std::isfinite(v)) continue;
    check_literal(shortest(v));
    check_literal(printf_e("%.16e", v));
    if (i % 10 == 0) check_literal(exact(v));
  }
}

// Halfway between adjacent doubles a < b: exactly halfway ties to even; one long-double step
// below goes to a, one step above to b. All spelt with every digit (up to ~770).
BOOST_AUTO_TEST_CASE(near_halfway) {
  std::mt19937_64 rng(2);
  std::vector<double> as = {1.0, 9007199254740992.0, 0.1, DBL_MIN, 5e-324, 123456789012345678901.0,
                            std::nextafter(DBL_MAX, 0.0), 1e23, 1e21, 1e-7};
  for (int i = 0; i < 300; ++i) {
    const std::uint64_t bits = rng() & 0x7fef'ffff'ffff'ffffULL;  // finite, below DBL_MAX
    double v;
    std::memcpy(&v, &bits, sizeof v);
    as.push_back(v);
  }
  for (const double a : as) {
    const double b = std::nextafter(a, DBL_MAX);
    const long double mid = (static_cast<long double>(a) + b) / 2;
    const double even = (std::bit_cast<std::uint64_t>(a) & 1) ? b : a;
    const std::string lits[] = {exact(mid), exact(std::nextafter(mid, 0.0L)), exact(std::nextafter(mid, 2.0L * b))};
    const double wants[] = {even, a, b};
    for (int j = 0; j < 3; ++j) {
      BOOST_TEST_CONTEXT("halfway case " << j << " above " << shortest(a)) {
        // The oracle's double is the one the halfway arithmetic says.
        BOOST_TEST(expected_for(lits[j]) == es_number_to_string(wants[j]));
        check_literal(lits[j]);
        check_literal("-" + lits[j]);
      }
    }
  }
}

// Range edges: DBL_MAX and the overflow threshold, the smallest subnormal and the underflow
// threshold, -0 in every spelling, huge exponents both ways.
BOOST_AUTO_TEST_CASE(range_edges) {
  const long double max_mid = (static_cast<long double>(DBL_MAX) + std::ldexp(1.0L, 1024)) / 2;  // DBL_MAX + ½ULP
  for (const std::string& s :
       {exact(DBL_MAX), exact(std::nextafter(max_mid, 0.0L)), std::string("1.7976931348623157e308"),
        std::string("1.7976931348623158e308"), std::string("1.7976931348623159e308"), exact(max_mid),
        std::string("1e309"), std::string("179769313486231580793728971405303415079934132710037826936173778980444968292"
                                           "764750946649017977587207096330286416692887910946555547851940402630657488671"
                                           "505820681908902000708383676273854845817711531764475730270069855571366959622"
                                           "842914819860834936475292719074168444365510704342711559699508093042880177904"
                                           "17449019260935135"),
        std::string("5e-324"), std::string("4.9406564584124654e-324"), std::string("2.4703282292062328e-324"),
        std::string("2.4703282292062327e-324"), exact(std::ldexp(1.0L, -1075)), std::string("1e-324"),
        std::string("2.2250738585072011e-308"), std::string("2.2250738585072014e-308"),
        std::string("2.225073858507201136057409796709131975934819546351645648e-308"), std::string("1e-400"),
        std::string("1e-99999"), std::string("1e+308"), std::string("0.000000000000000000001e330")}) {
    check_literal(s);
    check_literal("-" + s);
  }
  for (const char* zero : {"-0", "-0.0", "-0e5", "-0E-5", "-0.000e+999", "0e-999", "-1e-400"}) {
    BOOST_TEST(canon(zero) == "0", zero);
    check_literal(zero);
  }
}

BOOST_AUTO_TEST_SUITE_END()

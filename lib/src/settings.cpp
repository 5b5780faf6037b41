// settings.cpp — JSON text → RFC 8785 (JCS) canonical form, and Settings::parse.
//
// We drive Boost.JSON's SAX parser (basic_parser) with our own handler rather than building a
// boost::json::value, because the DOM of Boost 1.81 loses exactly what JCS and I-JSON need:
//  * duplicate keys: boost::json::object silently keeps the last one; I-JSON says reject;
//  * integers: 9007199254740993 is stored exactly as int64, but JCS (like JS) treats every
//    number as a double, i.e. 9007199254740992;
//  * doubles: 1.81's own conversion is not always correctly rounded (e.g. 2.2250738585072011e-308,
//    2.4703282292062328e-324), and 1e400 silently becomes infinity, which has no JSON form.
// So the handler keeps each number's literal text and converts it with std::from_chars, which is
// correctly rounded. Boost still does the tokenising, the UTF-8 validation and the \u decoding
// (it rejects unpaired surrogate escapes, and UTF-8-encoded surrogates, by itself).
//
// The canonical text is built bottom-up while parsing: a scalar is rendered as soon as it is
// read, an array appends rendered elements to its buffer, an object collects (key, rendered
// value) pairs and sorts them when it closes. The canonical size does not depend on member order,
// so it is tallied exactly as we go; once it passes the limit we stop keeping text (bounding
// memory) but keep parsing, so the error can still state the exact size, and malformed input is
// still reported as malformed.

#include "pkgctx/settings.hpp"

#include <boost/json/basic_parser_impl.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pkgctx {
namespace {

namespace json = boost::json;

// ---------------------------------------------------------------------------------------------
// Strings (RFC 8785 §3.2.2.2, i.e. ECMAScript QuoteJSONString): only '"', '\\' and the C0
// controls are escaped; everything else, including DEL, '/', U+2028/2029 and all non-ASCII, is
// written as literal UTF-8. Escaping is a per-byte decision that never touches bytes >= 0x80, so a
// string may be escaped chunk by chunk even when a chunk boundary splits a UTF-8 sequence.

// The escape for byte `c`, or an empty view when `c` stands for itself. `buf` holds \u00XX forms.
std::string_view escape_of(unsigned char c, std::array<char, 6>& buf) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: break;
  }
  if (c >= 0x20) return {};
  static constexpr char hex[] = "0123456789abcdef";
  buf = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
  return {buf.data(), buf.size()};
}

void append_escaped(std::string& out, std::string_view s) {
  std::array<char, 6> buf;
  for (char ch : s) {
    std::string_view esc = escape_of(static_cast<unsigned char>(ch), buf);
    if (esc.empty()) {
      out += ch;
    } else {
      out += esc;
    }
  }
}

std::size_t escaped_size(std::string_view s) {
  std::array<char, 6> buf;
  std::size_t n = 0;
  for (char ch : s) {
    std::string_view esc = escape_of(static_cast<unsigned char>(ch), buf);
    n += esc.empty() ? 1 : esc.size();
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Key order (RFC 8785 §3.2.3): keys compare as arrays of UTF-16 code units. Byte order of UTF-8
// is code point order, and that agrees with UTF-16 order except for one range: U+E000..U+FFFF is
// one unit >= 0xE000, while every supplementary character starts with a lead surrogate in
// 0xD800..0xDBFF, so in UTF-16 all of U+10000.. sorts *before* U+E000..U+FFFF. utf16_rank moves
// that BMP range above U+10FFFF; ranks of all other scalar values stay their code points, so
// comparing ranks of the first differing code point gives the UTF-16 order.

std::uint32_t utf16_rank(std::uint32_t cp) { return cp >= 0xE000 && cp <= 0xFFFF ? cp + 0x110000 : cp; }

// Decodes the code point starting at s[i]. `s` is valid UTF-8 (the parser guarantees it).
std::uint32_t decode_at(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[k])); };
  const std::uint32_t b0 = byte(i);
  if (b0 < 0x80) return b0;
  if (b0 < 0xE0) return (b0 & 0x1F) << 6 | (byte(i + 1) & 0x3F);
  if (b0 < 0xF0) return (b0 & 0x0F) << 12 | (byte(i + 1) & 0x3F) << 6 | (byte(i + 2) & 0x3F);
  return (b0 & 0x07) << 18 | (byte(i + 1) & 0x3F) << 12 | (byte(i + 2) & 0x3F) << 6 | (byte(i + 3) & 0x3F);
}

bool utf16_less(std::string_view a, std::string_view b) {
  const auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  if (ib == b.end()) return false;  // b is a prefix of a, or equal
  if (ia == a.end()) return true;   // a is a proper prefix of b
  // Both strings agree before the mismatch, so a code point boundary found in `a` is one in `b`.
  std::size_t i = static_cast<std::size_t>(ia - a.begin());
  while (i > 0 && (static_cast<unsigned char>(a[i]) & 0xC0) == 0x80) --i;
  return utf16_rank(decode_at(a, i)) < utf16_rank(decode_at(b, i));
}

// ---------------------------------------------------------------------------------------------
// Numbers (RFC 8785 §3.2.2.3): every number is an IEEE-754 double, parsed as JS would (round to
// nearest) and written as ECMAScript Number::toString (ECMA-262 §6.1.6.1.20).

// Whether a literal that std::from_chars found out of range is too small (rounds to 0, as JS
// does) rather than too large (would be Infinity, which has no JSON form). Out-of-range literals
// are either >= DBL_MAX or < the smallest subnormal, so the position of the leading significant
// digit relative to the decimal point (negative means the magnitude is below 1) decides it.
bool underflows(std::string_view lit) {
  if (!lit.empty() && lit.front() == '-') lit.remove_prefix(1);
  const std::size_t e = lit.find_first_of("eE");
  const std::string_view mant = lit.substr(0, e);
  long long exp = 0;
  if (e != std::string_view::npos) {
    std::string_view digits = lit.substr(e + 1);
    bool neg = false;
    if (!digits.empty() && (digits.front() == '+' || digits.front() == '-')) {
      neg = digits.front() == '-';
      digits.remove_prefix(1);
    }
    for (char c : digits) exp = std::min(exp * 10 + (c - '0'), 1'000'000'000'000LL);  // saturate
    if (neg) exp = -exp;
  }
  const std::size_t dot = mant.find('.');
  const std::string_view int_part = mant.substr(0, dot);
  long long lead = 0;  // decimal exponent of the leading significant digit
  if (int_part != "0") {
    lead = static_cast<long long>(int_part.size()) - 1;  // JSON forbids leading zeros
  } else if (dot != std::string_view::npos) {
    const std::string_view frac = mant.substr(dot + 1);
    const std::size_t nz = frac.find_first_not_of('0');
    lead = -static_cast<long long>(nz == std::string_view::npos ? frac.size() : nz) - 1;
  }
  return lead + exp < 0;
}

// ECMAScript Number::toString for a finite double. std::to_chars without a precision yields the
// shortest digit string that round-trips, choosing the one nearest the value on ties — the same
// digits (s, k, n) the ECMAScript algorithm asks for; only the layout differs.
std::string format_number(double v) {
  if (v == 0) return "0";  // also -0
  std::array<char, 32> buf;
  const auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v, std::chars_format::scientific);
  std::string_view sci(buf.data(), static_cast<std::size_t>(res.ptr - buf.data()));  // -?d(.d+)?e[+-]dd+

  std::string out;
  if (sci.front() == '-') {
    out += '-';
    sci.remove_prefix(1);
  }
  const std::size_t epos = sci.find('e');
  std::string digits(1, sci[0]);
  if (epos > 1) digits.append(sci.substr(2, epos - 2));
  int exp10 = 0;
  for (char c : sci.substr(epos + 2)) exp10 = exp10 * 10 + (c - '0');
  if (sci[epos + 1] == '-') exp10 = -exp10;

  const int k = static_cast<int>(digits.size());  // number of significant digits
  const int n = exp10 + 1;                        // value = 0.digits × 10^n
  if (k <= n && n <= 21) {
    out += digits;
    out.append(static_cast<std::size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out.append(digits, 0, static_cast<std::size_t>(n));
    out += '.';
    out.append(digits, static_cast<std::size_t>(n));
  } else if (-6 < n && n <= 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-n), '0');
    out += digits;
  } else {
    out += digits[0];
    if (k > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += 'e';
    out += n - 1 > 0 ? '+' : '-';
    out += std::to_string(n - 1 > 0 ? n - 1 : 1 - n);
  }
  return out;
}

// For error messages: `s` with non-printable bytes as \xNN, cut to `max` bytes.
std::string excerpt(std::string_view s, std::size_t max = 40) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

// ---------------------------------------------------------------------------------------------
// The basic_parser handler. Invariants while `building_`:
//  * frames_ mirrors the parser's open containers, innermost last;
//  * scalar_ is empty except while a string value arrives in parts (then it holds `"` + the
//    escaped text so far), and number_ holds the literal of the number being read;
//  * an object's pending_key is the raw UTF-8 key whose value is being parsed.
// Once size_ exceeds max_bytes_, building_ turns false for good and all text is dropped.
class Canonicalizer {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  explicit Canonicalizer(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  std::size_t size() const noexcept { return size_; }
  std::string take_result() { return std::move(result_); }
  // Why the handler stopped the parse, when it did ("" when Boost itself failed).
  const std::string& failure() const noexcept { return failure_; }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }

  bool on_array_begin(json::error_code&) {
    if (building_) frames_.push_back(Frame{false, "[", {}, {}});
    return true;
  }
  bool on_array_end(std::size_t n, json::error_code& ec) {
    tally(2 + separators(n));
    if (!building_) return true;
    std::string text = std::move(frames_.back().text);
    frames_.pop_back();
    text += ']';
    return emit(std::move(text), ec);
  }

  bool on_object_begin(json::error_code&) {
    if (building_) frames_.push_back(Frame{true, {}, {}, {}});
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code& ec) {
    tally(2 + separators(n) + n);  // braces, commas, colons; keys tallied as they arrive
    if (!building_) return true;
    std::vector<Member> members = std::move(frames_.back().members);
    frames_.pop_back();
    std::sort(members.begin(), members.end(),
              [](const Member& a, const Member& b) { return utf16_less(a.key, b.key); });
    // Sorting makes duplicates adjacent. (Not checked once over the size limit: that is an error
    // anyway.)
    const auto dup = std::adjacent_find(members.begin(), members.end(),
                                        [](const Member& a, const Member& b) { return a.key == b.key; });
    if (dup != members.end()) return fail(ec, "duplicate key \"" + excerpt(dup->key) + "\" in the object ending here");

    std::string text = "{";
    for (const Member& m : members) {
      if (text.size() > 1) text += ',';
      text += '"';
      append_escaped(text, m.key);
      text += "\":";
      text += m.value;
    }
    text += '}';
    return emit(std::move(text), ec);
  }

  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    add_key(s);
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    add_key(s);
    tally(2);  // quotes
    return true;
  }

  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    add_string(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    add_string(s);
    tally(2);  // quotes
    if (!building_) return true;
    scalar_ += '"';
    return emit(std::exchange(scalar_, {}), ec);
  }

  bool on_number_part(json::string_view s, json::error_code&) {
    number_.append(s.data(), s.size());
    return true;
  }
  // Boost's own conversion is ignored; see the top of the file.
  bool on_int64(std::int64_t, json::string_view s, json::error_code& ec) { return end_number(s, ec); }
  bool on_uint64(std::uint64_t, json::string_view s, json::error_code& ec) { return end_number(s, ec); }
  bool on_double(double, json::string_view s, json::error_code& ec) { return end_number(s, ec); }

  bool on_bool(bool b, json::error_code& ec) { return literal(b ? "true" : "false", ec); }
  bool on_null(json::error_code& ec) { return literal("null", ec); }

  // Comments are off in parse_options; these exist only to satisfy the handler concept.
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  struct Member {
    std::string key;    // raw UTF-8, for ordering and duplicate detection
    std::string value;  // canonical text
  };
  struct Frame {
    bool object;
    std::string text;             // array: "[" and the elements so far
    std::vector<Member> members;  // object
    std::string pending_key;      // object
  };

  static std::size_t separators(std::size_t n) { return n == 0 ? 0 : n - 1; }

  void tally(std::size_t n) {
    size_ += n;
    if (building_ && size_ > max_bytes_) {
      building_ = false;
      std::vector<Frame>().swap(frames_);
      std::string().swap(scalar_);
      std::string().swap(result_);
    }
  }

  void add_key(json::string_view s) {
    const std::string_view sv(s.data(), s.size());
    tally(escaped_size(sv));
    if (building_) frames_.back().pending_key += sv;
  }

  void add_string(json::string_view s) {
    const std::string_view sv(s.data(), s.size());
    tally(escaped_size(sv));
    if (!building_) return;
    if (scalar_.empty()) scalar_ += '"';
    append_escaped(scalar_, sv);
  }

  bool literal(std::string_view text, json::error_code& ec) {
    tally(text.size());
    return building_ ? emit(std::string(text), ec) : true;
  }

  bool end_number(json::string_view last, json::error_code& ec) {
    number_.append(last.data(), last.size());
    const std::string literal_text = std::exchange(number_, {});
    double v = 0;
    const auto res = std::from_chars(literal_text.data(), literal_text.data() + literal_text.size(), v);
    if (res.ec == std::errc::result_out_of_range) {
      if (!underflows(literal_text)) {
        return fail(ec, "number " + excerpt(literal_text) + " is too large for an IEEE-754 double");
      }
      v = 0;
    } else if (res.ec != std::errc() || res.ptr != literal_text.data() + literal_text.size()) {
      // Cannot happen for a literal Boost accepted; kept so a grammar mismatch is an error, not UB.
      return fail(ec, "number " + excerpt(literal_text) + " cannot be read");
    }
    return literal(format_number(v), ec);
  }

  // Hands a finished value's canonical text to its container, or makes it the result.
  bool emit(std::string text, json::error_code&) {
    if (frames_.empty()) {
      result_ = std::move(text);
      return true;
    }
    Frame& f = frames_.back();
    if (f.object) {
      f.members.push_back(Member{std::exchange(f.pending_key, {}), std::move(text)});
    } else {
      if (f.text.size() > 1) f.text += ',';
      f.text += text;
    }
    return true;
  }

  bool fail(json::error_code& ec, std::string why) {
    failure_ = std::move(why);
    // Any failing code stops the parser; the caller reports failure_ instead of it.
    ec = json::make_error_code(json::error::exception);
    return false;
  }

  std::size_t max_bytes_;
  std::size_t size_ = 0;  // exact canonical size of everything parsed so far
  bool building_ = true;
  std::vector<Frame> frames_;
  std::string scalar_;
  std::string number_;
  std::string result_;
  std::string failure_;
};

// What went wrong when Boost itself stopped at `offset` with `ec`.
std::string describe_parse_error(const json::error_code& ec, std::string_view input, std::size_t offset,
                                 const Limits& limits) {
  const auto byte_at = [&](std::size_t i) { return static_cast<unsigned char>(input[i]); };
  if (ec == json::error::incomplete) return "unexpected end of input (empty or truncated JSON)";
  if (ec == json::error::too_deep) return "nested deeper than " + std::to_string(limits.max_depth) + " levels";
  if (ec == json::error::exponent_overflow) return "number exponent out of range";
  if (ec == json::error::illegal_leading_surrogate || ec == json::error::illegal_trailing_surrogate) {
    return "unpaired UTF-16 surrogate in a \\u escape";
  }
  if (ec == json::error::syntax && offset < input.size() && byte_at(offset) >= 0x80) {
    return "invalid UTF-8 (byte " + excerpt(input.substr(offset, 1)) + ")";
  }
  // A high-surrogate escape followed by anything but \u is reported as a plain syntax error.
  if (ec == json::error::syntax && offset >= 6 && input[offset - 6] == '\\' && input[offset - 5] == 'u' &&
      (input[offset - 4] == 'd' || input[offset - 4] == 'D') &&
      std::string_view("89abAB").find(input[offset - 3]) != std::string_view::npos) {
    return "unpaired UTF-16 surrogate in a \\u escape";
  }
  return ec.message();
}

}  // namespace

Result<std::string> canonicalize_json(std::string_view input, const Limits& limits) {
  try {
    json::parse_options opt;  // strict JSON: no comments, trailing commas or invalid UTF-8
    opt.max_depth = limits.max_depth;
    json::basic_parser<Canonicalizer> parser(opt, limits.max_settings);
    json::error_code ec;
    // basic_parser wants a non-null pointer even for empty input.
    const char* data = input.empty() ? "" : input.data();
    const std::size_t used = parser.write_some(false, data, input.size(), ec);
    const Canonicalizer& h = parser.handler();
    if (ec) {
      const std::string why = h.failure().empty() ? describe_parse_error(ec, input, used, limits) : h.failure();
      return make_error(Errc::invalid_settings, "invalid settings JSON at byte " + std::to_string(used) + ": " + why);
    }
    if (used != input.size()) {
      return make_error(Errc::invalid_settings,
                        "invalid settings JSON at byte " + std::to_string(used) + ": data after the JSON value");
    }
    if (h.size() > limits.max_settings) {
      return make_error(Errc::settings_too_large, "settings are " + std::to_string(h.size()) +
                                                      " bytes in canonical form, over the limit of " +
                                                      std::to_string(limits.max_settings));
    }
    return parser.handler().take_result();
  } catch (const std::bad_alloc&) {
    return make_error(Errc::settings_too_large, "out of memory while canonicalising settings");
  } catch (const std::exception& e) {
    return make_error(Errc::invalid_settings, std::string("cannot canonicalise settings: ") + e.what());
  }
}

Result<void> check_canonical_settings(std::string_view bytes, const std::string& what) {
  // The stored size is bounded by the mapping; the depth by the largest max_depth a daemon takes.
  const Limits lim{.max_settings = bytes.size(), .max_depth = 1001};
  auto canon = canonicalize_json(bytes, lim);
  if (!canon || *canon != bytes || bytes.front() != '{')
    return make_error(Errc::corrupt, what + ": the stored settings are not canonical JSON");
  return {};
}

Result<Settings> Settings::parse(std::string_view json_text, const Limits& limits) {
  Result<std::string> canonical = canonicalize_json(json_text, limits);
  if (!canonical) return canonical.error();
  // The canonical form's first byte tells the top-level kind.
  switch (canonical->front()) {
    case '{': break;
    case '[': return make_error(Errc::invalid_settings, "settings must be a JSON object, not an array");
    case '"': return make_error(Errc::invalid_settings, "settings must be a JSON object, not a string");
    case 't':
    case 'f': return make_error(Errc::invalid_settings, "settings must be a JSON object, not a boolean");
    case 'n': return make_error(Errc::invalid_settings, "settings must be a JSON object, not null");
    default: return make_error(Errc::invalid_settings, "settings must be a JSON object, not a number");
  }
  const std::uint64_t sum = checksum_bytes(*canonical);
  return Settings(std::move(*canonical), sum);
}

}  // namespace pkgctx

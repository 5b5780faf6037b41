// pkgctx/json_writer.hpp — a minimal streaming JSON writer: the daemon's answers and the dump
// (pkgctx/dump.hpp) that pkgctl and pkgctxd print alike.
//
// Answers are built straight into the client's output buffer: no DOM, no allocation per field.
// Strings are always valid JSON (escaped by Boost.JSON's serializer), and invalid UTF-8 (which can
// appear in an error message quoting a hostile request) becomes U+FFFD, so every answer is
// parseable by a strict reader. Output never contains a raw newline.
#pragma once

#include <boost/container/small_vector.hpp>

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace pkgctx {

void append_json_string(std::string& out, std::string_view s);

class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}

  JsonWriter& begin_object() { sep(); out_ += '{'; first_.push_back(true); return *this; }
  JsonWriter& end_object() { out_ += '}'; first_.pop_back(); return *this; }
  JsonWriter& begin_array() { sep(); out_ += '['; first_.push_back(true); return *this; }
  JsonWriter& end_array() { out_ += ']'; first_.pop_back(); return *this; }
  JsonWriter& key(std::string_view k) { sep(); append_json_string(out_, k); out_ += ':'; after_key_ = true; return *this; }
  JsonWriter& str(std::string_view v) { sep(); append_json_string(out_, v); return *this; }
  JsonWriter& num(std::uint64_t v) { sep(); return digits(v); }
  JsonWriter& num(std::int64_t v) { sep(); return digits(v); }
  JsonWriter& boolean(bool v) { sep(); out_ += v ? "true" : "false"; return *this; }
  JsonWriter& null() { sep(); out_ += "null"; return *this; }
  // Splices text already known to be one valid JSON value without newlines (canonical settings,
  // a serialized id).
  JsonWriter& raw(std::string_view json) { sep(); out_ += json; return *this; }

 private:
  void sep() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_.empty()) {
      if (!first_.back()) out_ += ',';
      first_.back() = false;
    }
  }
  template <class Int>
  JsonWriter& digits(Int v) {
    char buf[24];
    out_.append(buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, v).ptr - buf));
    return *this;
  }
  std::string& out_;
  // Per open container: nothing written in it yet. Answers nest a few levels: no allocation.
  boost::container::small_vector<bool, 8> first_;
  bool after_key_ = false;
};

}  // namespace pkgctx

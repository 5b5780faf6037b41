// The checksum conformance vectors of tests/data/jcs/vectors.json (DESIGN.md §3): JSON text →
// RFC 8785 canonical form → XXH3-64 checksum, or the error code for input that must be rejected.
// Header-only; any test binary may include it.
#pragma once

#include "test_support.hpp"

#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace pkgctx::test {

struct JcsVector {
  std::string name;
  std::string input;
  std::string canonical;  // empty when `error` is set
  std::string checksum;   // 16 lowercase hex digits; empty when `error` is set
  std::string error;      // errc_name of the rejection, or empty
};

// The vectors as shipped in this repository. Ends the test case if the file is missing, empty or
// malformed: a missing file must fail the suite, not skip it.
inline std::vector<JcsVector> load_jcs_vectors() {
  const std::string path = std::string(PKGCTX_SOURCE_DIR) + "/tests/data/jcs/vectors.json";
  std::ifstream in(path, std::ios::binary);
  BOOST_TEST_REQUIRE(in.good(), "cannot open " << path);
  std::ostringstream text;
  text << in.rdbuf();
  boost::system::error_code ec;
  // Every field is a string, so Boost's number conversion plays no part here.
  const boost::json::value doc = boost::json::parse(text.str(), ec);
  BOOST_TEST_REQUIRE(!ec, path << ": " << ec.message());
  const auto* list = doc.is_object() ? doc.as_object().if_contains("vectors") : nullptr;
  BOOST_TEST_REQUIRE((list && list->is_array()), path << " has no \"vectors\" array");
  std::vector<JcsVector> out;
  for (const auto& v : list->as_array()) {
    const auto& o = v.as_object();
    const auto str = [&](const char* key) {
      const auto* f = o.if_contains(key);
      return f ? std::string(f->as_string()) : std::string();
    };
    out.push_back({str("name"), str("input"), str("canonical"), str("checksum"), str("error")});
    const JcsVector& x = out.back();
    BOOST_TEST_REQUIRE((!x.name.empty() && (x.error.empty() ? x.checksum.size() == 16 : x.canonical.empty())),
                       path << ": malformed vector #" << out.size());
  }
  BOOST_TEST_REQUIRE(out.size() >= 50u, path << " holds only " << out.size() << " vectors");
  return out;
}

}  // namespace pkgctx::test

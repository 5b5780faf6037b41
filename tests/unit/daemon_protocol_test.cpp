// The control protocol without sockets: every op, every error code, and hostile input.
#define BOOST_TEST_MODULE daemon_protocol
#include <boost/test/unit_test.hpp>

#include "pkgctx/daemon/protocol.hpp"
#include "jcs_vectors.hpp"
#include "test_support.hpp"

#include <boost/json.hpp>

#include <random>

using namespace pkgctx;
using namespace pkgctx::daemon;
namespace json = boost::json;

namespace {

struct Fixture {
  test::SegmentName name{"proto"};
  Store store = make_store(name, 4, 512, 256);
  ConnectionStats connections;
  Protocol protocol{store, {}, &connections};
  Peer root{1, 0, 0, {}};
  Peer nobody{1, 65534, 65534, {}};  // not on the default allow-list

  static Store make_store(const std::string& n, std::uint32_t capacity, std::uint64_t arena, std::uint64_t max_settings) {
    SegmentOptions o;
    o.capacity = capacity;
    o.settings_bytes = arena;
    o.limits.max_settings = max_settings;
    auto s = Store::create(n, o);
    BOOST_TEST_REQUIRE(s.has_value());
    return std::move(*s);
  }

  std::string ask_raw(std::string_view line, bool may_write = true) {
    std::string out;
    protocol.handle(line, may_write ? root : nobody, out);
    return out;
  }

  // Sends one line; returns the answer, checking it is exactly one JSON object line.
  json::object ask(std::string_view line, bool may_write = true) {
    const std::string out = ask_raw(line, may_write);
    BOOST_TEST_REQUIRE(!out.empty());
    BOOST_TEST_REQUIRE(out.back() == '\n');
    BOOST_TEST_REQUIRE(out.find('\n') == out.size() - 1, "answer spans lines: " << out);
    json::error_code ec;
    json::value v = json::parse(std::string_view(out).substr(0, out.size() - 1), ec);
    BOOST_TEST_REQUIRE(!ec, "answer is not JSON: " << out);
    BOOST_TEST_REQUIRE(v.is_object());
    return v.get_object();
  }

  std::string error_code(std::string_view line, bool may_write = true) {
    json::object a = ask(line, may_write);
    BOOST_TEST_REQUIRE(a.at("ok") == false, "expected an error for " << line << ", got " << json::serialize(a));
    BOOST_TEST(!a.at("error").at("message").as_string().empty());
    return std::string(a.at("error").at("code").as_string());
  }

  std::uint64_t commits() const { return store.segment().info().commits; }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(protocol, Fixture)

BOOST_AUTO_TEST_CASE(update_round_trip) {
  auto a = ask(R"({"op":"update","name":"pkg","version":"1.0","settings":{"b":1,"a":[true,null]}})");
  BOOST_TEST(a.at("ok") == true);
  BOOST_TEST(a.at("name") == "pkg");
  BOOST_TEST(a.at("change") == "created");
  BOOST_TEST_REQUIRE(a.at("context").is_string());
  auto token = core::Token::parse(a.at("context").as_string(), store.segment());
  BOOST_TEST_REQUIRE(token.has_value());
  BOOST_TEST(!token->cancelled());

  // Same settings, other order: no change.
  a = ask(R"({"op":"update","name":"pkg","version":"1.0","settings":{"a":[true,null],"b":1}})");
  BOOST_TEST(a.at("change") == "none");
  BOOST_TEST(a.at("context").is_null());
  // Settings-only change: no token, old one lives.
  a = ask(R"({"op":"update","name":"pkg","version":"1.0","settings":{"b":2}})");
  BOOST_TEST(a.at("change") == "settings");
  BOOST_TEST(a.at("context").is_null());
  BOOST_TEST(!token->cancelled());
  // Version change: new token, old one cancelled with version_changed.
  a = ask(R"({"op":"update","name":"pkg","version":"2.0"})");
  BOOST_TEST(a.at("change") == "version");
  BOOST_TEST(a.at("context").is_string());
  BOOST_TEST(token->cancelled());
  BOOST_TEST(cause_name(token->cause()) == "version_changed");
  // Omitted settings mean {}.
  a = ask(R"({"op":"settings","name":"pkg"})");
  BOOST_TEST(json::serialize(a.at("settings")) == "{}");
}

BOOST_AUTO_TEST_CASE(settings_round_trip_is_canonical_and_checksummed) {
  ask(R"({"op":"update","name":"p","version":"v","settings":{"z":1.50,"a":"\u00e9"}})");
  auto a = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(a.at("ok") == true);
  BOOST_TEST(a.at("version") == "v");
  auto expect = Settings::parse(R"({"a":"é","z":1.5})");
  BOOST_TEST_REQUIRE(expect.has_value());
  BOOST_TEST(a.at("checksum").as_string() == expect->checksum_hex());
  // The canonical bytes are passed through untouched, so a client can checksum them as they are.
  const std::string raw = ask_raw(R"({"op":"settings","name":"p"})");
  BOOST_TEST(raw.find("\"settings\":" + expect->canonical() + ",") != std::string::npos, raw);

  auto n = ask(R"({"op":"need_update","name":"p","version":"v","checksum":")" + expect->checksum_hex() + "\"}");
  BOOST_TEST(n.at("need_update") == false);
  n = ask(R"({"op":"need_update","name":"p","version":"w","checksum":")" + expect->checksum_hex() + "\"}");
  BOOST_TEST(n.at("need_update") == true);
  n = ask(R"({"op":"need_update","name":"absent","version":"v","checksum":"0000000000000000"})");
  BOOST_TEST(n.at("need_update") == true);
}

BOOST_AUTO_TEST_CASE(event_round_trip) {
  auto a = ask(R"({"op":"event","event":"schedule","name":"nope"})");
  BOOST_TEST(a.at("ok") == true);
  BOOST_TEST(a.at("context").is_null());
  ask(R"({"op":"update","name":"p","version":"1"})");
  a = ask(R"({"op":"event","event":"schedule","name":"p"})");
  auto child = core::Token::parse(a.at("context").as_string(), store.segment());
  BOOST_TEST_REQUIRE(child.has_value());
  BOOST_TEST(child->key() == 2u);
  a = ask(R"({"op":"event","event":2,"name":"p"})");
  BOOST_TEST(child->cancelled());
  BOOST_TEST(cause_name(child->cause()) == "rescheduled");
  a = ask(R"({"op":"event","event":"7","name":"p"})");
  BOOST_TEST(core::Token::parse(a.at("context").as_string(), store.segment())->key() == 7u);
  a = ask(R"({"op":"event","event":"remove","name":"p"})");
  BOOST_TEST(a.at("context").is_string());
  auto s = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(s.at("version") == "");
  a = ask(R"({"op":"event","event":0,"name":"p"})");
  BOOST_TEST(a.at("context").is_string());
}

BOOST_AUTO_TEST_CASE(delete_round_trip) {
  auto a = ask(R"({"op":"delete","name":"p"})");
  BOOST_TEST(a.at("deleted") == false);
  BOOST_TEST(a.at("reason") == "no such package");
  ask(R"({"op":"update","name":"p","version":"1"})");
  // Only a removed package (version "") is deleted (DESIGN.md §2).
  a = ask(R"({"op":"delete","name":"p"})");
  BOOST_TEST(a.at("deleted") == false);
  BOOST_TEST(a.at("reason") == "the package is live: send event remove first");
  ask(R"({"op":"event","event":"remove","name":"p"})");
  a = ask(R"({"op":"delete","name":"p"})");
  BOOST_TEST(a.at("name") == "p");
  BOOST_TEST(a.at("deleted") == true);
  BOOST_TEST(!a.contains("reason"));
  BOOST_TEST(error_code(R"({"op":"settings","name":"p"})") == "no_such_package");
}

BOOST_AUTO_TEST_CASE(dump_round_trip) {
  ask(R"({"op":"update","name":"a","version":"1","settings":{"k":"v"}})");
  ask(R"({"op":"update","name":"b","version":"2"})");
  ask(R"({"op":"event","event":"schedule","name":"b"})");
  connections.socket = "/x.sock";
  auto a = ask(R"({"op":"dump"})");
  BOOST_TEST(a.at("ok") == true);
  const auto& seg = a.at("segment").as_object();
  BOOST_TEST(seg.at("name").as_string() == name.str());
  BOOST_TEST(seg.at("layout_version") == static_cast<int>(layout::kLayoutVersion));
  BOOST_TEST(seg.at("capacity") == 4);
  BOOST_TEST(seg.at("used") == 2);
  BOOST_TEST(seg.at("state") == "live");
  BOOST_TEST(a.at("daemon").at("socket") == "/x.sock");
  const auto& pk = a.at("packages").as_array();
  BOOST_TEST_REQUIRE(pk.size() == 2u);
  BOOST_TEST(pk[0].at("name") == "a");
  BOOST_TEST(pk[0].at("version") == "1");
  BOOST_TEST(pk[0].at("checksum").as_string() == Settings::parse(R"({"k":"v"})")->checksum_hex());
  BOOST_TEST(pk[0].at("settings_size") == 9);
  BOOST_TEST(pk[1].at("child_generations").as_object().size() == 6u);
  BOOST_TEST(pk[1].at("child_generations").at("2") == 1);
  BOOST_TEST(pk[1].at("last_cause").is_null());
  BOOST_TEST(seg.at("limits").at("max_name").to_number<int>() > 0);
  BOOST_TEST(a.at("daemon").as_object().contains("started_realtime_ns"));
  BOOST_TEST(pk[1].at("root_generation") == 0);
}

BOOST_AUTO_TEST_CASE(id_is_echoed_on_success_and_error) {
  auto a = ask(R"({"id":"x-1","op":"dump"})");
  BOOST_TEST(a.at("id") == "x-1");
  a = ask(R"({"op":"settings","name":"none","id":42})");
  BOOST_TEST(a.at("ok") == false);
  BOOST_TEST(a.at("id") == 42);
  BOOST_TEST(error_code(R"({"op":"dump","id":{"a":1}})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"dump","id":")" + std::string(300, 'x') + "\"}") == "bad_request");
}

BOOST_AUTO_TEST_CASE(every_core_error_code) {
  BOOST_TEST(error_code(R"({"op":"update","name":"a b","version":"1"})") == "invalid_name");
  BOOST_TEST(error_code(R"({"op":"update","name":"","version":"1"})") == "invalid_name");
  BOOST_TEST(error_code(R"({"op":"update","name":"é","version":"1"})") == "invalid_name");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":""})") == "invalid_version");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":"\n"})") == "invalid_version");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":"1","settings":[1]})") == "invalid_settings");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":"1","settings":{"k":1,"k":2}})") == "invalid_settings");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":"1","settings":null})") == "invalid_settings");
  BOOST_TEST(error_code(R"({"op":"update","name":"a","version":"1","settings":{"k":")" + std::string(300, 'x') +
                        "\"}}") == "settings_too_large");
  BOOST_TEST(error_code(R"({"op":"event","event":"bogus","name":"a"})") == "invalid_event");
  BOOST_TEST(error_code(R"({"op":"event","event":8,"name":"a"})") == "invalid_event");
  BOOST_TEST(error_code(R"({"op":"event","event":-1,"name":"a"})") == "invalid_event");
  BOOST_TEST(error_code(R"({"op":"event","event":18446744073709551615,"name":"a"})") == "invalid_event");
  BOOST_TEST(error_code(R"({"op":"settings","name":"absent"})") == "no_such_package");
  BOOST_TEST(error_code(R"({"op":"need_update","name":"a","version":"1","checksum":"xyz"})") == "invalid_settings");
  // Capacity 4 packages, 512 arena bytes (8 chunks).
  const std::string big = std::string(R"({"k":")") + std::string(180, 'x') + "\"}";
  for (int i = 0; i < 2; ++i)
    BOOST_TEST(ask(R"({"op":"update","name":"s)" + std::to_string(i) + R"(","version":"1","settings":)" + big + "}")
                   .at("ok") == true);
  BOOST_TEST(error_code(R"({"op":"update","name":"s9","version":"1","settings":)" + big + "}") == "settings_full");
  ask(R"({"op":"update","name":"t1","version":"1"})");
  ask(R"({"op":"update","name":"t2","version":"1"})");
  BOOST_TEST(error_code(R"({"op":"update","name":"t3","version":"1"})") == "table_full");
}

BOOST_AUTO_TEST_CASE(forbidden_writes_change_nothing_reads_are_open) {
  ask(R"({"op":"update","name":"p","version":"1"})");
  const auto before = commits();
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2"})", false) == "forbidden");
  BOOST_TEST(error_code(R"({"op":"event","event":"update","name":"p"})", false) == "forbidden");
  BOOST_TEST(error_code(R"({"op":"delete","name":"p"})", false) == "forbidden");
  BOOST_TEST(commits() == before);
  BOOST_TEST(ask(R"({"op":"settings","name":"p"})", false).at("version") == "1");
  BOOST_TEST(ask(R"({"op":"dump"})", false).at("ok") == true);
  BOOST_TEST(ask(R"({"op":"need_update","name":"p","version":"1","checksum":"0000000000000000"})", false).at("ok") == true);
}

// A client that names the segment it means is refused by a daemon serving another one, before
// any op runs (pkgctl sends "segment" when --segment or PKGCTX_SEGMENT was given).
BOOST_AUTO_TEST_CASE(a_request_for_another_segment_changes_nothing) {
  const std::string mine = "\"segment\":\"" + name.str() + "\"";
  BOOST_TEST(ask(R"({"op":"update","name":"p","version":"1",)" + mine + "}").at("change") == "created");
  const auto before = commits();
  for (const std::string& line : {
           std::string(R"({"op":"update","name":"p","version":"2","segment":"other"})"),
           std::string(R"({"op":"event","event":"update","name":"p","segment":"other"})"),
           std::string(R"({"op":"delete","segment":"other","name":"p"})"),
           std::string(R"({"op":"dump","segment":"other"})"),
           // Checked before the op's own fields: a wrong segment is the first thing to report.
           std::string(R"({"op":"update","segment":"other","name":"bad name"})"),
       }) {
    json::object a = ask(line);
    BOOST_TEST_REQUIRE(a.at("ok") == false, line);
    BOOST_TEST(a.at("error").at("code") == "wrong_segment", line);
    const std::string message(a.at("error").at("message").as_string());
    BOOST_TEST(message.find("\"other\"") != std::string::npos, message);
    BOOST_TEST(message.find("\"" + name.str() + "\"") != std::string::npos, message);
  }
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","segment":7})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"dump","segment":"other","segment":"other"})") == "bad_request");
  BOOST_TEST(commits() == before);
  BOOST_TEST(ask(R"({"op":"settings","name":"p",)" + mine + "}").at("version") == "1");
  BOOST_TEST(ask(R"({"op":"dump",)" + mine + "}").at("ok") == true);
}

BOOST_AUTO_TEST_CASE(bad_requests) {
  ask(R"({"op":"update","name":"p","version":"1"})");
  const auto before = commits();
  for (std::string_view line : {
           std::string_view(""), std::string_view("   "), std::string_view("garbage"), std::string_view("{"),
           std::string_view("{}"), std::string_view("[1,2]"), std::string_view("\"op\""), std::string_view("null"),
           std::string_view(R"({"op":5})"), std::string_view(R"({"op":"nope"})"),
           std::string_view(R"({"op":"update","name":1,"version":"1"})"),
           std::string_view(R"({"op":"update","name":"p"})"),
           std::string_view(R"({"op":"update","name":"p","version":"3","extra":1})"),
           std::string_view(R"({"op":"update","name":"p","version":"3","name":"q"})"),
           std::string_view(R"({"op":"update","op":"dump"})"),
           std::string_view(R"({"op":"event","name":"p"})"),
           std::string_view(R"({"op":"event","name":"p","event":1.5})"),
           std::string_view(R"({"op":"event","name":"p","event":true})"),
           std::string_view(R"({"op":"event","name":"p","event":null})"),
           std::string_view(R"({"op":"delete","name":null})"),
           std::string_view(R"({"op":"dump","name":"p"})"),
           std::string_view(R"({"op":"dump"} {"op":"dump"})"),
           std::string_view(R"({"op":"dump"},)"),
           std::string_view("{\"op\":\"update\",\"name\":\"p\",\"version\":\"\xff\"}"),
           std::string_view("{\"op\":\"dump\"}\0", 14),
       }) {
    BOOST_TEST(error_code(line) == "bad_request", "line: " << line);
  }
  BOOST_TEST(commits() == before);
  // A trailing CR is tolerated (telnet, CRLF clients).
  BOOST_TEST(ask("{\"op\":\"dump\"}\r").at("ok") == true);
  // Escaped keys are keys.
  BOOST_TEST(ask(R"({"\u006fp":"dump"})").at("ok") == true);
}

BOOST_AUTO_TEST_CASE(duplicate_keys_are_found_among_few_and_many_members) {
  // A request's first repeated key is named, whether it has a few members (compared in place)
  // or many (a hash set past 16); each line is parsed by the reader the last one left behind.
  auto message = [&](const std::string& line) { return std::string(ask(line).at("error").at("message").as_string()); };
  BOOST_TEST(message(R"({"op":"dump","a":1,"b":2,"b":3,"a":4})") == "field \"b\" appears twice");
  std::string many = R"({"op":"dump")";
  for (int i = 0; i < 40; ++i) many += ",\"k" + std::to_string(i) + "\":" + std::to_string(i);
  BOOST_TEST(message(many + R"(,"k30":0,"k7":0})") == "field \"k30\" appears twice");
  BOOST_TEST(message(many + "}").find("unknown field") != std::string::npos);
  BOOST_TEST(ask(R"({"op":"dump"})").at("ok") == true);
  // An "id" key spelled with an escape is still read as written (its size is checked).
  BOOST_TEST(ask(R"({"\u0069d":"x","op":"dump"})").at("id") == "x");
  BOOST_TEST(error_code(R"({"op":"dump","\u0069d":")" + std::string(300, 'x') + "\"}") == "bad_request");
}

BOOST_AUTO_TEST_CASE(nesting_limits) {
  protocol.configure({.max_depth = 8, .allow = {}});
  auto nested = [](int depth) {
    std::string s;
    for (int i = 0; i < depth - 1; ++i) s += "{\"a\":";
    s += "{}";
    for (int i = 0; i < depth - 1; ++i) s += "}";
    return s;
  };
  BOOST_TEST(ask(R"({"op":"update","name":"d","version":"1","settings":)" + nested(8) + "}").at("ok") == true);
  BOOST_TEST(error_code(R"({"op":"update","name":"d","version":"2","settings":)" + nested(9) + "}") == "bad_request");
  std::string deep(100000, '[');
  BOOST_TEST(error_code(deep) == "bad_request");
  BOOST_TEST(error_code(R"({"op":"dump","id":)" + std::string(5000, '[') + "}") == "bad_request");
}

BOOST_AUTO_TEST_CASE(random_garbage_always_gets_one_answer) {
  std::mt19937_64 rng(12345);
  const std::vector<std::string> pieces = {
      "{", "}", "[", "]", "\"op\"", ":", ",", "\"update\"", "\"event\"", "\"dump\"", "\"name\"", "\"p\"", "\"version\"",
      "\"1\"", "\"settings\"", "{}", "1e999", "-0", "true", "null", "\"\\u0000\"", "\"\\ud800\"", "\xc3", "\xff", " ",
      "\"event\"", "\"schedule\"", "7", "\"id\"", "\"delete\"", "\"need_update\"", "\"checksum\""};
  const auto before = commits();
  int ok = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string line;
    if (i % 2 == 0) {
      const int n = static_cast<int>(rng() % 40);
      for (int k = 0; k < n; ++k) line += static_cast<char>(rng() % 256);
    } else {
      const int n = static_cast<int>(rng() % 16);
      for (int k = 0; k < n; ++k) line += pieces[rng() % pieces.size()];
    }
    std::erase(line, '\n');
    json::object a = ask(line);
    if (a.at("ok") == true) ++ok;
  }
  // Mutations of valid requests reach the deeper paths (field checks, the store's validation).
  const std::vector<std::string> valid = {
      R"({"op":"update","name":"m","version":"1","settings":{"a":[1,2,{"b":null}]},"id":1})",
      R"({"op":"event","event":"schedule","name":"m"})", R"({"op":"need_update","name":"m","version":"1","checksum":"0123456789abcdef"})",
      R"({"op":"settings","name":"m"})", R"({"op":"delete","name":"m"})", R"({"op":"dump"})"};
  for (int i = 0; i < 20000; ++i) {
    std::string line = valid[rng() % valid.size()];
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < edits; ++k) {
      const std::size_t at = rng() % line.size();
      switch (rng() % 3) {
        case 0: line[at] = static_cast<char>(rng() % 256); break;
        case 1: line.erase(at, 1); break;
        default: line.insert(at, 1, "{}[]\",:0a"[rng() % 10]); break;
      }
      if (line.empty()) line = "x";
    }
    std::erase(line, '\n');
    json::object a = ask(line);
    if (a.at("ok") == true) ++ok;
  }
  BOOST_TEST_MESSAGE("random lines answered ok: " << ok);
  BOOST_TEST(commits() >= before);
}

BOOST_AUTO_TEST_CASE(settings_are_checked_as_the_client_wrote_them) {
  // The settings member reaches the canonicaliser verbatim, wherever it sits and however it is
  // spelled, so its errors (and their byte offsets) are those of the client's text.
  const std::vector<std::string> raws = {R"({ "a":1,  "a":2 })", R"([1, {"x":1e400}])", R"("s\"}]")", "-1.5e3", "null",
                                         R"({"k":{"}":"]"},"k":0})"};
  for (const std::string& raw : raws) {
    const std::string expected = Settings::parse(raw).error().message;
    for (const std::string& line :
         {R"({"op":"update","name":"p","version":"1","settings":)" + raw + "}",
          R"({ "settings" :  )" + raw + R"(  , "op":"update","name":"p","version":"1","id":"}"})",
          R"({"op":"update","name":"p","sett\u0069ngs":)" + raw + R"(,"version":"1"})",
          R"({"id":"q\"}]\\", "op":"update","name":"p","version":"1","settings":)" + raw + "}"}) {
      auto a = ask(line);
      BOOST_TEST(a.at("error").at("code") == "invalid_settings", line);
      BOOST_TEST(a.at("error").at("message").as_string() == expected, line);
    }
  }
  BOOST_TEST(ask(R"({"settings" : {"b" : [1, "]"], "a":{}} ,"op":"update","name":"p","version":"1"})").at("ok") == true);
  BOOST_TEST(ask(R"({"op":"settings","name":"p"})").at("settings") == json::parse(R"({"a":{},"b":[1,"]"]})"));
}

BOOST_AUTO_TEST_CASE(the_allow_list_decides_writes) {
  const Peer worker{7, 1000, 1000, {}};
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"1"})", false) == "forbidden");
  std::string out;
  protocol.handle(R"({"op":"update","name":"p","version":"1"})", worker, out);
  BOOST_TEST(json::parse(out).at("error").at("code") == "forbidden");
  protocol.configure({.max_depth = 64, .allow = {.self = 998, .uids = {1000}, .gids = {}}});
  out.clear();
  protocol.handle(R"({"op":"update","name":"p","version":"1"})", worker, out);
  BOOST_TEST(json::parse(out).at("ok") == true);
  BOOST_TEST(commits() == 1u);
}

BOOST_AUTO_TEST_CASE(counters_count) {
  ask(R"({"op":"dump"})");
  ask("nonsense");
  BOOST_TEST(protocol.stats().requests == 2u);
  BOOST_TEST(protocol.stats().errors == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(allow_list) {
  AllowList allow;
  allow.self = 998;
  allow.uids = {1000};
  allow.gids = {4242};
  BOOST_TEST(allow.allows(Peer{1, 0, 5, {}}));
  BOOST_TEST(allow.allows(Peer{1, 998, 5, {}}));
  BOOST_TEST(allow.allows(Peer{1, 1000, 5, {}}));
  BOOST_TEST(allow.allows(Peer{1, 1001, 4242, {}}));
  BOOST_TEST(allow.allows(Peer{1, 1001, 5, {7, 4242}}));
  BOOST_TEST(!allow.allows(Peer{1, 1001, 5, {7}}));
  BOOST_TEST(!allow.allows(Peer{1, 65534, 65534, {}}));
}

// A dump written a slice at a time (as the server does, so one dump never holds the event loop)
// is byte for byte the dump written at once, whatever the slice size.
BOOST_FIXTURE_TEST_CASE(sliced_dump_equals_whole_dump, Fixture) {
  ask(R"({"op":"update","name":"a","version":"1"})");
  ask(R"({"op":"update","name":"b","version":"2","settings":{"k":1}})");
  ask(R"({"op":"update","name":"c","version":"3"})");
  ask(R"({"op":"delete","name":"a"})");  // an empty slot among full ones
  for (std::uint32_t slice : {1u, 2u, 3u, 100u}) {
    std::string whole, sliced;
    protocol.handle(R"({"op":"dump","id":7})", nobody, whole);
    DumpCursor cursor;
    protocol.handle(R"({"op":"dump","id":7})", nobody, sliced, &cursor);
    BOOST_TEST_REQUIRE(cursor.active);
    int steps = 0;
    while (cursor.active) {
      BOOST_TEST_REQUIRE(protocol.continue_dump(cursor, sliced, slice));
      BOOST_TEST_REQUIRE(++steps <= 4);
    }
    // The request counters differ by the requests in between; compare past them.
    const auto packages = [](const std::string& s) { return s.substr(s.find("\"packages\"")); };
    BOOST_TEST(packages(sliced) == packages(whole));
    BOOST_TEST(json::parse(sliced.substr(0, sliced.size() - 1)).at("packages") ==
               json::parse(whole.substr(0, whole.size() - 1)).at("packages"));
  }
}
// --- DESIGN §2.1 fields and the v2 ops ----------------------------------------------------------
BOOST_FIXTURE_TEST_SUITE(protocol_v2, Fixture)

BOOST_AUTO_TEST_CASE(update_carries_settings_version_and_maintenance_and_settings_returns_them) {
  auto a = ask(R"({"op":"update","name":"p","version":"1","settings":{"a":1},"settings_version":3,"maintenance":"paused"})");
  BOOST_TEST(a.at("change") == "created");
  auto s = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(s.at("settings_version") == 3);
  BOOST_TEST(s.at("maintenance") == "paused");
  // settings_version alone: settings-only.
  a = ask(R"({"op":"update","name":"p","version":"1","settings":{"a":1},"settings_version":4,"maintenance":"paused"})");
  BOOST_TEST(a.at("change") == "settings");
  BOOST_TEST(a.at("context").is_null());
  // maintenance alone: settings-only; omitted means "".
  a = ask(R"({"op":"update","name":"p","version":"1","settings":{"a":1},"settings_version":4})");
  BOOST_TEST(a.at("change") == "settings");
  s = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(s.at("maintenance") == "");
  BOOST_TEST(s.at("settings_version") == 4);
  // remove resets both
  ask(R"({"op":"update","name":"p","version":"1","settings":{"a":1},"settings_version":4,"maintenance":"m"})");
  ask(R"({"op":"event","event":"remove","name":"p"})");
  s = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(s.at("settings_version") == 0);
  BOOST_TEST(s.at("maintenance") == "");
}

BOOST_AUTO_TEST_CASE(force_is_a_version_change) {
  auto a = ask(R"({"op":"update","name":"p","version":"1"})");
  auto t = core::Token::parse(a.at("context").as_string(), store.segment()).value();
  a = ask(R"({"op":"update","name":"p","version":"1","force":true})");
  BOOST_TEST(a.at("change") == "version");
  BOOST_TEST(a.at("context").is_string());
  BOOST_TEST(cause_name(t.cause()) == "version_changed");
  a = ask(R"({"op":"update","name":"p","version":"1","force":false})");
  BOOST_TEST(a.at("change") == "none");
}

BOOST_AUTO_TEST_CASE(caller_named_cause_on_update_and_event) {
  auto a = ask(R"({"op":"update","name":"p","version":"1"})");
  auto first = core::Token::parse(a.at("context").as_string(), store.segment()).value();
  a = ask(R"({"op":"event","event":"schedule","name":"p"})");
  auto child = core::Token::parse(a.at("context").as_string(), store.segment()).value();
  a = ask(R"({"op":"event","event":"schedule","name":"p","cause":"operator_disable"})");
  BOOST_TEST(child.cause_text().value() == "operator_disable");
  a = ask(R"({"op":"update","name":"p","version":"2","cause":"rollout_7"})");
  BOOST_TEST(first.cause_text().value() == "rollout_7");
  auto d = ask(R"({"op":"dump"})");
  BOOST_TEST(d.at("packages").as_array()[0].at("last_cause") == "rollout_7");
  const auto c0 = commits();
  BOOST_TEST(error_code(R"({"op":"event","event":"update","name":"p","cause":"Bad"})") == "invalid_cause");
  BOOST_TEST(error_code(R"({"op":"event","event":"update","name":"p","cause":""})") == "invalid_cause");
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"3","cause":7})") == "bad_request");
  BOOST_TEST(commits() == c0);
}

BOOST_AUTO_TEST_CASE(too_many_causes_is_an_error_answer) {
  ask(R"({"op":"update","name":"p","version":"1"})");
  for (int i = 0; i < 64; ++i)
    BOOST_TEST(ask(R"({"op":"event","event":"update","name":"p","cause":"c)" + std::to_string(i) + R"("})").at("ok") == true);
  const auto c0 = commits();
  BOOST_TEST(error_code(R"({"op":"event","event":"update","name":"p","cause":"one_more"})") == "too_many_causes");
  BOOST_TEST(commits() == c0);
}

BOOST_AUTO_TEST_CASE(need_update_with_maintenance) {
  ask(R"({"op":"update","name":"p","version":"1","maintenance":"paused"})");
  const std::string sum = "\"" + Settings().checksum_hex() + "\"";
  auto q = [&](std::string_view extra) {
    return ask(R"({"op":"need_update","name":"p","version":"1","checksum":)" + sum + std::string(extra) + "}")
        .at("need_update")
        .as_bool();
  };
  BOOST_TEST(!q(""));
  BOOST_TEST(!q(R"(,"maintenance":"paused")"));
  BOOST_TEST(q(R"(,"maintenance":"")"));
  BOOST_TEST(error_code(R"({"op":"need_update","name":"p","version":"1","checksum":)" + sum +
                        R"(,"maintenance":"no spaces"})") == "invalid_maintenance");
}

BOOST_AUTO_TEST_CASE(bad_v2_fields_are_refused_and_change_nothing) {
  ask(R"({"op":"update","name":"p","version":"1"})");
  const auto c0 = commits();
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","settings_version":-1})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","settings_version":1.5})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","settings_version":"3"})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","force":1})") == "bad_request");
  BOOST_TEST(error_code(R"({"op":"update","name":"p","version":"2","maintenance":"a/b"})") == "invalid_maintenance");
  BOOST_TEST(error_code(R"({"op":"need_update","name":"p","version":"2","checksum":"0000000000000000","force":true})") ==
             "bad_request");
  BOOST_TEST(commits() == c0);
}

BOOST_AUTO_TEST_CASE(update_settings_op) {
  auto a = ask(R"({"op":"update","name":"p","version":"1","maintenance":"m"})");
  auto first = core::Token::parse(a.at("context").as_string(), store.segment()).value();
  a = ask(R"({"op":"update_settings","name":"p","settings":{"x":1},"settings_version":2})");
  BOOST_TEST(a.at("ok") == true);
  BOOST_TEST(a.at("name") == "p");
  BOOST_TEST(a.at("changed") == true);
  BOOST_TEST(!first.cancelled());
  auto s = ask(R"({"op":"settings","name":"p"})");
  BOOST_TEST(json::serialize(s.at("settings")) == R"({"x":1})");
  BOOST_TEST(s.at("settings_version") == 2);
  BOOST_TEST(s.at("maintenance") == "m");
  BOOST_TEST(s.at("version") == "1");
  a = ask(R"({"op":"update_settings","name":"p","settings":{"x":1},"settings_version":2})");
  BOOST_TEST(a.at("changed") == false);
  a = ask(R"({"op":"update_settings","name":"ghost","settings":{"x":1}})");
  BOOST_TEST(a.at("changed") == false);
  BOOST_TEST(error_code(R"({"op":"update_settings","name":"ghost"})") == "bad_request");  // settings required
  BOOST_TEST(error_code(R"({"op":"update_settings","name":"p","settings":{"x":1}})", false) == "forbidden");
  BOOST_TEST(error_code(R"({"op":"update_settings","name":"p","settings":[1]})") == "invalid_settings");
}

BOOST_AUTO_TEST_CASE(checksum_op_matches_every_conformance_vector) {
  test::SegmentName big{"proto-sum"};
  Store s = make_store(big.str(), 4, 1 << 16, 1 << 16);
  Protocol p{s, {}, nullptr};
  auto send = [&](const std::string& line) {
    std::string out;
    p.handle(line, nobody, out);  // a read: no write permission needed
    return json::parse(out).as_object();
  };
  const auto vectors = test::load_jcs_vectors();
  for (const test::JcsVector& v : vectors) {
    BOOST_TEST_CONTEXT(v.name) {
      // The text form: the controller's exact bytes, invalid ones included.
      auto a = send(R"({"op":"checksum","text":)" + json::serialize(json::string(v.input)) + "}");
      if (v.error.empty()) {
        BOOST_TEST(a.at("ok") == true, json::serialize(a));
        BOOST_TEST(a.at("checksum").as_string() == v.checksum);
        BOOST_TEST(a.at("canonical").as_string() == v.canonical);
      } else {
        BOOST_TEST(a.at("ok") == false);
        BOOST_TEST(a.at("error").at("code").as_string() == v.error);
      }
      // The object form, for every input that is a JSON value the request line can hold.
      json::error_code ec;
      json::parse(v.input, ec);
      if (!ec && v.error.empty()) {
        a = send(R"({"op":"checksum","settings":)" + v.input + "}");
        BOOST_TEST(a.at("checksum").as_string() == v.checksum);
        BOOST_TEST(a.at("canonical").as_string() == v.canonical);
      }
    }
  }
  BOOST_TEST(send(R"({"op":"checksum"})").at("error").at("code") == "bad_request");
  BOOST_TEST(send(R"({"op":"checksum","settings":{},"text":"{}"})").at("error").at("code") == "bad_request");
  BOOST_TEST(s.segment().info().commits == 0u);
}

BOOST_AUTO_TEST_CASE(dump_shows_v2_fields_and_a_packages_own_history) {
  ask(R"({"op":"update","name":"a","version":"1"})");
  ask(R"({"op":"event","event":"schedule","name":"a"})");
  ask(R"({"op":"event","event":"remove","name":"a"})");
  ask(R"({"op":"delete","name":"a"})");
  ask(R"({"op":"update","name":"b","version":"1","settings_version":9,"maintenance":"paused"})");
  auto d = ask(R"({"op":"dump"})");
  const auto& b = d.at("packages").as_array().at(0).as_object();
  BOOST_TEST(b.at("name") == "b");
  BOOST_TEST(b.at("root_generation") == 0);
  for (const auto& g : b.at("child_generations").as_object()) BOOST_TEST(g.value() == 0);
  BOOST_TEST(b.at("last_cause").is_null());
  BOOST_TEST(b.at("settings_version") == 9);
  BOOST_TEST(b.at("maintenance") == "paused");
}

BOOST_AUTO_TEST_SUITE_END()

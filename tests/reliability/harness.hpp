// Drives the store and the reference model (model.hpp) with the same operations and says where
// they differ. Shared by the reliability suites.
#pragma once

#include "model.hpp"
#include "pkgctx/store.hpp"

#include <cstdint>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace pkgctx::model {

// A settings input and its canonical form, written by hand (so the model does not depend on the
// canonicaliser). Sizes straddle the 64-byte arena chunk so blocks of 0, 1, 2 and 5 chunks move.
struct SettingsCase {
  std::string json;
  std::string canonical;
};

inline const std::vector<SettingsCase>& settings_pool() {
  static const std::vector<SettingsCase> pool = [] {
    std::vector<SettingsCase> p = {
        {"{}", "{}"},
        {R"({ "b": 1, "a": [true, null, 1.50] })", R"({"a":[true,null,1.5],"b":1})"},
        {R"({"port":8080,"host":"example.org","tls":{"on":true,"ciphers":["x","y"]},"z":1e2})",
         R"({"host":"example.org","port":8080,"tls":{"ciphers":["x","y"],"on":true},"z":100})"},
    };
    const std::string pad(270, 'p');
    p.push_back({"{\"pad\":\"" + pad + "\",\"n\":-0}", "{\"n\":0,\"pad\":\"" + pad + "\"}"});
    return p;
  }();
  return pool;
}

inline const Settings& pool_settings(std::size_t i) {
  static const std::vector<Settings> parsed = [] {
    std::vector<Settings> v;
    for (const auto& c : settings_pool()) v.push_back(Settings::parse(c.json).value());
    return v;
  }();
  return parsed.at(i);
}

enum class OpKind : std::uint8_t { update, event, erase, need_update, settings, token, update_settings };

struct Op {
  OpKind kind = OpKind::update;
  std::string name;
  std::string version;        // update, need_update
  std::size_t settings = 0;   // index in settings_pool(): update, need_update
  int event = 0;              // event, token
  // §2.1: update (all), update_settings (settings_version), event (cause), need_update
  // (maintenance, compared only when has_maintenance).
  std::uint64_t settings_version = 0;
  std::string maintenance;
  bool has_maintenance = false;
  bool force = false;
  std::string cause;

  UpdateArgs args() const { return {settings_version, maintenance, force, cause}; }
  UpdateOptions options() const {
    UpdateOptions o;
    o.settings_version = settings_version;
    o.maintenance = maintenance;
    o.force = force;
    o.cause = cause;
    return o;
  }
  std::string extras() const {
    std::ostringstream os;
    if (settings_version) os << ", sv=" << settings_version;
    if (!maintenance.empty() || has_maintenance) os << ", m=\"" << maintenance << "\"";
    if (force) os << ", force";
    if (!cause.empty()) os << ", cause=" << cause;
    return os.str();
  }

  std::string str() const {
    std::ostringstream os;
    switch (kind) {
      case OpKind::update: os << "update(" << name << ", \"" << version << "\", s" << settings << extras() << ")"; break;
      case OpKind::update_settings: os << "update_settings(" << name << ", s" << settings << extras() << ")"; break;
      case OpKind::event: os << "event(" << event << ", " << name << extras() << ")"; break;
      case OpKind::erase: os << "delete(" << name << ")"; break;
      case OpKind::need_update: os << "need_update(" << name << ", \"" << version << "\", s" << settings << extras() << ")"; break;
      case OpKind::settings: os << "pending_settings(" << name << ")"; break;
      case OpKind::token: os << "token(" << name << ", " << event << ")"; break;
    }
    return os.str();
  }
};

// What the store answered, in the model's vocabulary, plus the real token.
struct Observed {
  Answer answer;
  std::optional<core::Token> token;
};

inline Answer model_apply(Model& m, const Op& op) {
  const std::string& canon = settings_pool().at(op.settings).canonical;
  switch (op.kind) {
    case OpKind::update: return m.update(op.name, op.version, canon, op.args());
    case OpKind::update_settings: return m.update_settings(op.name, canon, op.settings_version);
    case OpKind::event: return m.event(op.event, op.name, op.cause);
    case OpKind::erase: return m.erase(op.name);
    case OpKind::need_update:
      return m.need_update(op.name, op.version, canon,
                           op.has_maintenance ? std::optional<std::string>(op.maintenance) : std::nullopt);
    case OpKind::settings: return m.pending_settings(op.name);
    case OpKind::token: return m.token(op.name, op.event);
  }
  return {};
}

inline Observed store_apply(Store& s, const Op& op) {
  Observed o;
  auto fail = [&](const Error& e) { o.answer.error = std::string(errc_name(e.code)); };
  switch (op.kind) {
    case OpKind::update: {
      auto r = s.update(op.name, op.version, pool_settings(op.settings), op.options());
      if (!r) {
        fail(r.error());
        break;
      }
      o.token = r->token;
      o.answer.change = std::string(change_name(r->change));
      break;
    }
    case OpKind::update_settings: {
      auto r = s.update_settings(op.name, pool_settings(op.settings), op.settings_version);
      if (!r) {
        fail(r.error());
        break;
      }
      o.answer.flag = *r;
      break;
    }
    case OpKind::event: {
      auto r = s.handle_event(op.event, op.name, op.cause);
      if (!r) {
        fail(r.error());
        break;
      }
      o.token = *r;
      break;
    }
    case OpKind::erase: {
      auto r = s.erase(op.name);
      if (!r) {
        fail(r.error());
        break;
      }
      o.answer.flag = *r;
      break;
    }
    case OpKind::need_update: {
      auto r = s.need_update(op.name, op.version, pool_settings(op.settings).checksum(),
                             op.has_maintenance ? std::optional<std::string_view>(op.maintenance) : std::nullopt);
      if (!r) {
        fail(r.error());
        break;
      }
      o.answer.flag = *r;
      break;
    }
    case OpKind::settings: {
      auto r = s.pending_settings(op.name);
      if (!r) {
        fail(r.error());
        break;
      }
      o.answer.settings = r->canonical();
      break;
    }
    case OpKind::token: {
      auto r = s.view().token(op.name, op.event);
      if (!r) {
        fail(r.error());
        break;
      }
      o.token = *r;
      break;
    }
  }
  if (o.token) o.answer.token = Tok{};  // presence only: generations are the store's business
  return o;
}

// "" when the store's answer is the model's; else what differs.
inline std::string answer_diff(const Op& op, const Answer& expect, const Observed& got) {
  Answer e = expect;
  if (e.token) e.token = Tok{};
  if (e == got.answer && (!got.token || !got.token->cancelled())) return "";
  std::ostringstream os;
  os << op.str() << ": model says error=\"" << e.error << "\" token=" << (e.token ? "yes" : "no") << " change=\""
     << e.change << "\" flag=" << e.flag << " settings=" << e.settings << "; store says error=\"" << got.answer.error
     << "\" token=" << (got.answer.token ? (got.token->cancelled() ? "cancelled!" : "yes") : "no") << " change=\""
     << got.answer.change << "\" flag=" << got.answer.flag << " settings=" << got.answer.settings;
  return os.str();
}

using Table = std::map<std::string, Model::Row>;

// The table as a View sees it, with a consistency check of each record.
inline Table store_table(const View& v, std::string* problems = nullptr) {
  Table t;
  for (const PackageRecord& r : v.list(true).value()) {
    if (problems && checksum_bytes(r.settings) != r.checksum) *problems += "checksum of " + r.name + " is wrong; ";
    if (problems && t.count(r.name)) *problems += r.name + " is listed twice; ";
    t[r.name] = {r.version, r.settings, r.settings_version, r.maintenance};
  }
  return t;
}

inline std::string table_diff(const View& v, const Model& m) {
  std::string problems;
  const Table got = store_table(v, &problems);
  const Table want = m.table();
  if (got != want) problems += "table differs: store {" + Model::describe(got) + "} model {" + Model::describe(want) + "}";
  // Everything in the table is found by name (the index agrees with the slots).
  for (const auto& [name, row] : got) {
    auto r = v.read(name, true);
    if (!r) {
      problems += "lookup of " + name + " fails: " + r.error().message + "; ";
    } else if (r->version != row.version || r->settings != row.settings || r->settings_version != row.settings_version ||
               r->maintenance != row.maintenance) {
      problems += "lookup of " + name + " disagrees with the listing; ";
    }
  }
  return problems;
}

// A token the store handed out and the model's idea of it.
struct Tracked {
  core::Token token;
  Tok tok;
  std::string what;  // the op that produced it
};

inline std::string token_diff(const Tracked& t, const Model& m) {
  const bool want = m.cancelled(t.tok);
  const bool got = t.token.cancelled();
  const auto text = t.token.cause_text();
  const std::string cause = text ? *text : "error " + text.error().message;
  const auto ok = m.acceptable_causes(t.tok);
  if (want == got && ok.count(cause)) return "";
  std::ostringstream os;
  os << "token from " << t.what << ": store cancelled=" << got << " cause=" << cause << ", model cancelled=" << want
     << " causes={";
  for (const auto& c : ok) os << c << " ";
  os << "}";
  return os.str();
}

inline std::string tokens_diff(const std::vector<Tracked>& ts, const Model& m) {
  std::string out;
  for (const auto& t : ts) {
    if (auto d = token_diff(t, m); !d.empty()) out += d + "; ";
  }
  return out;
}

// Applies `op` to both; tracks a returned token; returns the differences ("" if none).
inline std::string step(Store& s, Model& m, const Op& op, std::vector<Tracked>& tracked) {
  Observed o = store_apply(s, op);
  const Answer a = model_apply(m, op);
  std::string d = answer_diff(op, a, o);
  if (o.token && a.token) tracked.push_back({*o.token, *a.token, op.str()});
  return d;
}

// A random op over small pools. `names` are valid package names.
inline Op random_op(std::mt19937_64& rng, const std::vector<std::string>& names) {
  static const char* versions[] = {"1", "2", "3.0-rc1"};
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  Op op;
  op.name = names[pick(names.size())];
  op.version = versions[pick(3)];
  op.settings = pick(settings_pool().size());
  op.event = static_cast<int>(pick(8));
  const std::size_t r = pick(100);
  if (r < 30) {
    op.kind = OpKind::update;
  } else if (r < 62) {
    op.kind = OpKind::event;
    if (pick(3) == 0) op.event = static_cast<int>(pick(3));  // favour update/remove/schedule
  } else if (r < 72) {
    op.kind = OpKind::erase;
  } else if (r < 82) {
    op.kind = OpKind::need_update;
  } else if (r < 88) {
    op.kind = OpKind::settings;
  } else if (r < 94) {
    op.kind = OpKind::update_settings;
  } else {
    op.kind = OpKind::token;
  }
  // §2.1 extras, from small pools; now and then a fresh cause name, so a long run fills the
  // segment's table of names and meets too_many_causes.
  static const char* modes[] = {"", "", "paused", "frozen-1"};
  static const char* causes[] = {"rollout", "operator_x", "push_7"};
  op.settings_version = pick(4) == 0 ? pick(3) : 0;
  op.maintenance = modes[pick(4)];
  op.has_maintenance = pick(2) == 0;
  op.force = pick(8) == 0;
  if (pick(4) == 0) op.cause = pick(6) == 0 ? "n" + std::to_string(pick(100)) : causes[pick(3)];
  // Rarely, invalid input: it must be refused and change nothing.
  if (pick(60) == 0) {
    switch (pick(5)) {
      case 0: op.name = "bad name"; break;
      case 1: op.version = ""; break;
      case 2: op.maintenance = "bad mode"; op.has_maintenance = true; break;
      case 3: op.cause = "Bad-Cause"; break;
      default: op.event = 8; break;
    }
  }
  return op;
}

}  // namespace pkgctx::model

// The reference model: DESIGN.md §2 in plain C++, written from the contract's table and nothing
// else (no pkgctx header, no shared memory, no generation arithmetic borrowed from the store).
//
// State: a map name → package {version, settings (canonical JSON), the history of the events a
// root token sees (root events), and for each child key k the history of the events a key-k
// child sees (root events and key-k events)}, each history a list of causes. A package is one
// *incarnation*: Delete ends it for good (its tokens stay cancelled with cause "deleted"); a
// later Update of the same name starts a new one. Tokens are (incarnation, key, root position,
// child position); a root token is cancelled iff its history grew, a child token iff its key's.
//
// Causes are compared by their contract names ("version_changed", …, "none" while live). A
// cancelled token must report the cause of the event that cancelled it (the first one after its
// snapshot in its history: a child cancelled through its root gets the root's cause) while at
// most 8 further events it would see followed; after that the most recent one is acceptable too
// (§2). For a deleted incarnation the store may reuse its slot, so "further events" are bounded
// by every event in the table since the deletion.
//
// §2.1 (v2): each package also holds settings_version and maintenance (a change of either alone
// is a settings-only change; remove resets both); UpdateSettings; force (the same version handled
// as a version change); and caller-named causes: the name replaces the built-in cause of what the
// call cancels. The segment keeps at least 64 distinct names: a name is kept once a call cancelled
// something with it, and a call naming a 65th new one is refused (too_many_causes).
//
// Settings are identified by their canonical text: the caller supplies it (tests write the
// canonical form of each pool entry by hand), so the model never runs the canonicaliser.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace pkgctx::model {

inline constexpr int kKeys = 6;  // child keys 2..7

struct Tok {
  std::size_t inc = 0;  // incarnation
  int key = 0;          // 0/1 root, 2..7 child
  std::size_t root = 0;
  std::size_t child = 0;

  bool operator==(const Tok&) const = default;
};

// What an operation answers. `error` is the contract's error name ("" = success).
// The optional arguments of Update (§2.1).
struct UpdateArgs {
  std::uint64_t settings_version = 0;
  std::string maintenance;
  bool force = false;
  std::string cause;  // "" = the built-in cause
};

struct Answer {
  std::string error;
  std::optional<Tok> token;  // update, event, token
  std::string change;        // update: none | created | version | settings
  bool flag = false;         // delete, need_update
  std::string settings;      // pending settings

  bool operator==(const Answer&) const = default;
};

class Model {
 public:
  struct Package {
    std::string name;
    std::string version;       // "" = removed
    std::string settings = "{}";
    std::uint64_t settings_version = 0;
    std::string maintenance;
    bool deleted = false;
    std::size_t root_bumps_at_delete = 0;     // table-wide root events when it was deleted
    std::size_t events_at_delete = 0;         // table-wide events of any kind when it was deleted
    std::vector<std::string> root_causes{""};  // [g] = cause of the g-th root event
    // [k-2][g] = cause of the g-th event a key-k child sees (root events included)
    std::array<std::vector<std::string>, kKeys> child_causes{{{""}, {""}, {""}, {""}, {""}, {""}}};
    std::size_t root_gen() const { return root_causes.size() - 1; }
    std::size_t child_gen(int key) const { return child_causes[static_cast<std::size_t>(key - 2)].size() - 1; }
  };

  // --- §2 operations ---------------------------------------------------------------------------

  Answer update(const std::string& name, const std::string& version, const std::string& settings,
                const UpdateArgs& args = {}) {
    if (auto e = check_name(name); !e.empty()) return err(e);
    if (!valid_version(version)) return err("invalid_version");
    if (!valid_maintenance(args.maintenance)) return err("invalid_maintenance");
    if (!args.cause.empty() && !valid_cause(args.cause)) return err("invalid_cause");
    if (!args.cause.empty() && !cause_room(args.cause)) return err("too_many_causes");
    Answer a;
    Package* p = live(name);
    if (!p) {
      incs_.push_back(Package{});
      Package& n = incs_.back();
      n.name = name;
      n.version = version;
      n.settings = settings;
      n.settings_version = args.settings_version;
      n.maintenance = args.maintenance;
      live_[name] = incs_.size() - 1;
      a.change = "created";
      a.token = snapshot(incs_.size() - 1, 0);
      return a;
    }
    if (p->version == version && !args.force) {
      const bool same = p->settings == settings && p->settings_version == args.settings_version &&
                        p->maintenance == args.maintenance;
      a.change = same ? "none" : "settings";
      p->settings = settings;
      p->settings_version = args.settings_version;
      p->maintenance = args.maintenance;
      return a;
    }
    a.change = p->version.empty() ? "created" : "version";
    p->version = version;
    p->settings = settings;
    p->settings_version = args.settings_version;
    p->maintenance = args.maintenance;
    bump_root(*p, named(args.cause, "version_changed"));
    a.token = snapshot(live_.at(name), 0);
    return a;
  }

  // UpdateSettings (§2.1): flag = changed.
  Answer update_settings(const std::string& name, const std::string& settings, std::uint64_t settings_version) {
    if (auto e = check_name(name); !e.empty()) return err(e);
    Answer a;
    Package* p = live(name);
    if (!p || p->version.empty() || (p->settings == settings && p->settings_version == settings_version)) return a;
    p->settings = settings;
    p->settings_version = settings_version;
    a.flag = true;
    return a;
  }

  Answer event(int event, const std::string& name, const std::string& cause = "") {
    if (event < 0 || event > 7) return err("invalid_event");
    if (auto e = check_name(name); !e.empty()) return err(e);
    if (!cause.empty() && !valid_cause(cause)) return err("invalid_cause");
    if (!cause.empty() && !cause_room(cause)) return err("too_many_causes");
    Answer a;
    Package* p = live(name);
    if (!p) return a;
    if (event == 0) {
      bump_root(*p, named(cause, "update_event"));
    } else if (event == 1) {
      p->version.clear();
      p->settings = "{}";
      p->settings_version = 0;
      p->maintenance.clear();
      bump_root(*p, named(cause, "removed"));
    } else {
      p->child_causes[static_cast<std::size_t>(event - 2)].push_back(named(cause, "rescheduled"));
      ++events_;
    }
    a.token = snapshot(live_.at(name), event);
    return a;
  }

  Answer erase(const std::string& name) {
    if (auto e = check_name(name); !e.empty()) return err(e);
    Answer a;
    Package* p = live(name);
    if (!p || !p->version.empty()) return a;  // absent, or present and not removed: kept
    bump_root(*p, "deleted");
    p->deleted = true;
    p->root_bumps_at_delete = root_bumps_;
    p->events_at_delete = events_;
    live_.erase(name);
    a.flag = true;
    return a;
  }

  Answer need_update(const std::string& name, const std::string& version, const std::string& settings,
                     const std::optional<std::string>& maintenance = std::nullopt) const {
    if (auto e = check_name(name); !e.empty()) return err(e);
    if (maintenance && !valid_maintenance(*maintenance)) return err("invalid_maintenance");
    Answer a;
    const Package* p = live(name);
    a.flag = !p || p->version != version || p->settings != settings || (maintenance && p->maintenance != *maintenance);
    return a;
  }

  Answer pending_settings(const std::string& name) const {
    if (auto e = check_name(name); !e.empty()) return err(e);
    const Package* p = live(name);
    if (!p) return err("no_such_package");
    Answer a;
    a.settings = p->settings;
    return a;
  }

  // The current context of `name` for `event` (View::token).
  Answer token(const std::string& name, int event) const {
    if (event < 0 || event > 7) return err("invalid_event");
    if (auto e = check_name(name); !e.empty()) return err(e);
    if (!live(name)) return err("no_such_package");
    Answer a;
    a.token = snapshot(live_.at(name), event);
    return a;
  }

  // --- tokens ----------------------------------------------------------------------------------

  bool cancelled(const Tok& t) const {
    const Package& p = incs_.at(t.inc);
    return t.key >= 2 ? p.child_gen(t.key) != t.child : p.root_gen() != t.root;
  }

  // DESIGN §2: a cause is exact while at most this many events followed the cancelling one.
  static constexpr std::size_t kExactFurther = 8;

  // Every cause name the store may report for `t` ({"none"} while live).
  std::set<std::string> acceptable_causes(const Tok& t) const {
    const Package& p = incs_.at(t.inc);
    if (!cancelled(t)) return {"none"};
    if (t.key < 2) {
      const std::string exact = p.root_causes[t.root + 1];
      std::size_t further = p.root_gen() - t.root - 1;  // events after the cancelling one
      if (p.deleted) further += root_bumps_ - p.root_bumps_at_delete;  // the slot may be reused
      if (further <= kExactFurther) return {exact};
      if (p.deleted) return any_cause(false);  // a reuser's latest
      return {exact, p.root_causes.back()};
    }
    const auto& ring = p.child_causes[static_cast<std::size_t>(t.key - 2)];
    const std::string exact = ring[t.child + 1];
    std::size_t further = ring.size() - 2 - t.child;  // events after the cancelling one
    if (p.deleted) further += events_ - p.events_at_delete;  // the slot may be reused
    if (further <= kExactFurther) return {exact};
    if (p.deleted) return any_cause(true);
    return {exact, ring.back()};
  }

  // --- state -----------------------------------------------------------------------------------

  // What the table holds for one package.
  struct Row {
    std::string version;
    std::string settings;
    std::uint64_t settings_version = 0;
    std::string maintenance;
    bool operator==(const Row&) const = default;
  };
  // name → row of every package present.
  std::map<std::string, Row> table() const {
    std::map<std::string, Row> t;
    for (const auto& [name, i] : live_) {
      const Package& p = incs_[i];
      t[name] = {p.version, p.settings, p.settings_version, p.maintenance};
    }
    return t;
  }
  std::size_t cause_names() const { return causes_.size(); }
  const Package* live(const std::string& name) const {
    auto it = live_.find(name);
    return it == live_.end() ? nullptr : &incs_[it->second];
  }
  std::size_t size() const { return live_.size(); }

  static std::string describe(const std::map<std::string, Row>& t) {
    std::ostringstream os;
    for (const auto& [n, r] : t)
      os << n << "=" << (r.version.empty() ? "<removed>" : r.version) << " " << r.settings << " sv=" << r.settings_version
         << " m=" << r.maintenance << "; ";
    return os.str();
  }

  // §3 name rule, independent of the store's validator.
  static std::string check_name(const std::string& name) {
    if (name.empty() || name.size() > 128) return "invalid_name";
    for (char c : name) {
      const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-';
      if (!ok) return "invalid_name";
    }
    return "";
  }
  // §2.1 maintenance: 0..64 bytes of [A-Za-z0-9._-].
  static bool valid_maintenance(const std::string& m) {
    if (m.size() > 64) return false;
    for (char c : m) {
      const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                      c == '_' || c == '-';
      if (!ok) return false;
    }
    return true;
  }
  // §2.1 cause name: [a-z][a-z0-9_]{0,31}.
  static bool valid_cause(const std::string& c) {
    if (c.empty() || c.size() > 32 || c[0] < 'a' || c[0] > 'z') return false;
    for (char ch : c) {
      if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_')) return false;
    }
    return true;
  }
  static bool valid_version(const std::string& v) {
    if (v.empty() || v.size() > 128) return false;
    for (char c : v) {
      if (c < 0x20 || c > 0x7e) return false;
    }
    return true;
  }

 private:
  Package* live(const std::string& name) {
    auto it = live_.find(name);
    return it == live_.end() ? nullptr : &incs_[it->second];
  }
  static Answer err(const std::string& e) {
    Answer a;
    a.error = e;
    return a;
  }
  static constexpr std::size_t kCauseNames = 64;
  bool cause_room(const std::string& c) const { return causes_.count(c) || causes_.size() < kCauseNames; }
  // The cause a call reports: the caller's name (kept from now on) or the built-in one.
  std::string named(const std::string& cause, const char* builtin) {
    if (cause.empty()) return builtin;
    causes_.insert(cause);
    return cause;
  }
  std::set<std::string> any_cause(bool with_rescheduled) const {
    std::set<std::string> all = causes_;
    for (const char* c : {"version_changed", "update_event", "removed", "deleted"}) all.insert(c);
    if (with_rescheduled) all.insert("rescheduled");
    return all;
  }
  void bump_root(Package& p, const std::string& cause) {
    p.root_causes.push_back(cause);
    for (auto& h : p.child_causes) h.push_back(cause);  // every child of the old root is cancelled
    ++root_bumps_;
    ++events_;
  }
  Tok snapshot(std::size_t inc, int key) const {
    const Package& p = incs_[inc];
    return Tok{inc, key, p.root_gen(), key >= 2 ? p.child_gen(key) : 0};
  }

  std::vector<Package> incs_;                  // every incarnation ever, deleted ones included
  std::map<std::string, std::size_t> live_;    // name → its live incarnation
  std::size_t root_bumps_ = 0;                 // root events anywhere in the table
  std::size_t events_ = 0;                     // events of any kind anywhere in the table
  std::set<std::string> causes_;               // caller-named causes the segment keeps
};

}  // namespace pkgctx::model

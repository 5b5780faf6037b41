#include "batch.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <array>
#include <istream>
#include <optional>
#include <ostream>
#include <sstream>

namespace pkgctl::detail {

namespace {

// Splits a line into words as a POSIX shell does for quoting (no expansions): blanks separate;
// '…' is literal; in "…" a backslash escapes " \ $ and `; elsewhere a backslash escapes the next
// character. Hand-written: Boost's split_unix would add a shared library to every pkgctl start,
// and CLI11's splitter drops the character after a closing quote. nullopt: an unterminated quote.
std::optional<std::vector<std::string>> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (ch == ' ' || ch == '\t' || ch == '\r') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (ch == '\'') {
      const std::size_t end = line.find('\'', i + 1);
      if (end == std::string_view::npos) return std::nullopt;
      word.append(line.substr(i + 1, end - i - 1));
      i = end;
    } else if (ch == '"') {
      for (++i;; ++i) {
        if (i >= line.size()) return std::nullopt;
        if (line[i] == '"') break;
        if (line[i] == '\\' && i + 1 < line.size() && std::string_view("\"\\$`").find(line[i + 1]) != std::string_view::npos)
          ++i;
        word += line[i];
      }
    } else if (ch == '\\' && i + 1 < line.size()) {
      word += line[++i];
    } else {
      word += ch;
    }
  }
  if (in_word) words.push_back(std::move(word));
  return words;
}

// The error code a failed line reports when the failure named none, from its exit code.
std::string_view code_for_exit(int code) noexcept {
  switch (code) {
    case kExitUsage: return "usage";
    case kExitNoSuchPackage: return "no_such_package";
    case kExitRejected: return "rejected";
    case kExitOutcomeUnknown: return "outcome_unknown";
    case kExitForbidden: return "forbidden";
    default: return "daemon_unreachable";
  }
}

std::string error_line(std::string_view code, std::string message, int exit_code) {
  // "pkgctl: what: why\n" → "what: why"
  if (message.rfind("pkgctl: ", 0) == 0) message.erase(0, 8);
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  for (char& c : message)
    if (c == '\n') c = ' ';
  return boost::json::serialize(boost::json::object{
      {"ok", false}, {"error", {{"code", code}, {"message", message}, {"exit", exit_code}}}});
}

}  // namespace

bool batch_command(std::string_view name) noexcept {
  static constexpr std::array<std::string_view, 7> kCommands = {"update",      "update-settings", "event", "delete",
                                                                "need-update", "settings",        "check"};
  for (auto c : kCommands)
    if (c == name) return true;
  return false;
}

int run_batch(const std::string& socket, const std::vector<std::string>& prefix, Io io) {
  BatchContext batch{DaemonLink(socket), {}};
  int worst = kExitOk;
  std::istringstream no_input;  // a line's command never reads the batch's own stdin
  for (std::string line; std::getline(io.in, line);) {
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;  // blank lines and comments
    std::ostringstream out, err;
    batch.last_code.clear();
    int code = kExitUsage;
    if (auto words = split_words(line)) {
      std::vector<std::string> args{"pkgctl"};
      args.insert(args.end(), prefix.begin(), prefix.end());
      args.insert(args.end(), words->begin(), words->end());
      std::vector<const char*> argv;
      for (const auto& a : args) argv.push_back(a.c_str());
      no_input.clear();
      code = run_one(static_cast<int>(argv.size()), argv.data(), {out, err, no_input}, &batch);
    } else {
      err << "unterminated quote in \"" << line << "\"";
    }
    const bool cancelled_check = code == kExitCancelled;  // `check` answered: the JSON says so
    if (code == kExitOk || cancelled_check) {
      io.out << out.str();
    } else {
      const std::string_view name = batch.last_code.empty() ? code_for_exit(code) : std::string_view(batch.last_code);
      io.out << error_line(name, err.str(), code) << '\n';
      // Rejections (a bad line, a refused write) make the batch's exit 5; a connection that
      // failed (4), a write of unknown outcome (6) or a refusal of the user (7) outranks them.
      const int as_batch = code == kExitUsage || code == kExitNoSuchPackage ? kExitRejected : code;
      if (worst == kExitOk || (worst == kExitRejected && as_batch != kExitRejected)) worst = as_batch;
    }
    io.out.flush();  // a script reading the answers as they come sees each at once
  }
  return worst;
}

}  // namespace pkgctl::detail

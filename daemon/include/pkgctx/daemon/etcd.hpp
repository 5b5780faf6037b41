// pkgctx/daemon/etcd.hpp — a small, blocking client of etcd's v3 JSON gateway (DESIGN §10).
//
// Why the JSON gateway over HTTP/1.1 with Boost.Beast rather than gRPC: Beast is header-only in
// the Boost pkgctx already builds with, so following etcd adds no library, no generated code
// and no second runtime (gRPC's threads, its completion queues) to the daemon; the handful of
// calls pkgctxd makes (range, put, txn, lease grant/keep-alive, one watch stream) are plain JSON
// posts. The cost is base64 keys and int64s as strings, both handled here.
//
// Threading: a Client is used by one thread at a time. Every socket wait also watches `stop_fd`
// (an eventfd): once it is readable, every call returns promptly with an error, which is how the
// daemon stops its etcd threads without waiting for a timeout.
//
// Endpoints are tried in turn: a call that fails on one (refused, reset, timed out, an HTTP
// error other than a gRPC status) closes the connection and the next call starts on the next one.
#pragma once

#include "pkgctx/error.hpp"

#include <boost/json/value.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pkgctx::etcd {

struct KeyValue {
  std::string key, value;
  std::int64_t create_revision = 0, mod_revision = 0;
};

struct Event {
  bool is_delete = false;
  KeyValue kv;  // a delete's kv has its key and the deleting revision as mod_revision
};

struct RangeResult {
  std::int64_t revision = 0;  // the store's revision the listing reflects
  std::vector<KeyValue> kvs;
};

// One message of a watch stream.
struct WatchResponse {
  std::int64_t revision = 0;          // header revision
  std::int64_t compact_revision = 0;  // nonzero: the start revision was compacted (stream ends)
  bool canceled = false;
  std::vector<Event> events;          // in revision order
};

// The end of the key range of all keys starting with `prefix`.
std::string prefix_end(std::string_view prefix);

class Client {
 public:
  // `endpoints`: http://HOST:PORT URLs. `timeout` bounds connecting and each unary call.
  Client(std::vector<std::string> endpoints, int stop_fd, std::chrono::milliseconds timeout);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Errors (all Errc::daemon_unreachable, message naming the endpoint and why) unless stated.
  Result<RangeResult> range_prefix(std::string_view prefix, bool keys_only = false);
  Result<std::int64_t> put(std::string_view key, std::string_view value, std::int64_t lease = 0);
  Result<std::int64_t> delete_key(std::string_view key);
  // Puts and deletes in one transaction (one revision). Each op: {key, value, delete?}.
  struct Op {
    std::string key, value;
    bool is_delete = false;
  };
  Result<std::int64_t> txn(const std::vector<Op>& ops, std::int64_t lease = 0);
  Result<std::int64_t> lease_grant(std::int64_t ttl_s);
  // Errors: no_such_package when the lease has expired (grant a new one).
  Result<void> lease_keepalive(std::int64_t id);

  // Compacts the history up to `revision` (tests and tools; pkgctxd never compacts).
  Result<void> compact(std::int64_t revision);
  // The member this client talks to and the leader it knows (0: none).
  struct MemberStatus {
    std::uint64_t member_id = 0, leader = 0;
  };
  Result<MemberStatus> status();

  // Opens the watch stream of keys under `prefix` from `start_revision`, on the current endpoint
  // (this client's connection then carries only the stream).
  Result<void> watch(std::string_view prefix, std::int64_t start_revision);
  // The next message of the open stream; blocks until one arrives, the stream breaks or stop.
  // With `idle` > 0: Errc::timed_out when nothing arrived for that long (the stream stays open).
  Result<WatchResponse> next(std::chrono::milliseconds idle = std::chrono::milliseconds(0));
  // Closes the connection (and its stream): the next call starts on the next endpoint.
  void next_endpoint();

  // A linearizable read of one key's count: answers only while this member is running and part
  // of a quorum. Returns the store's revision.
  Result<std::int64_t> probe(std::string_view key);

  const std::string& endpoint() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pkgctx::etcd

#pragma once

// The TCP rendezvous store, the bootstrap for ranks started without MPI (the torchrun habit;
// scripts/launch sets the variables): rank 0 serves a small key-value store at FRUGAL_ADDR, every
// rank connects to it, and make_tcp_bootstrap's allgather is built on it. Part of frugal_ucx (its
// only user); needs no MPI.
//
// Thread-safety: the bootstrap and a TcpStoreClient are used by one thread at a time; a
// TcpStoreServer serves on a thread of its own. Errors: frugal::Error — InvalidArgument for bad
// configuration (the message names the variable or parameter), Timeout when peers do not show up
// before the deadline, Mismatch when ranks disagree (world size, token), Transport for socket
// failures.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/bootstrap.hpp"

namespace frugal {

struct StoreAddress {
  std::string host = "127.0.0.1";
  std::uint16_t port = 29400;
};

// "host:port", "[ipv6]:port", ":port" or "port" (the last two mean 127.0.0.1). Throws
// InvalidArgument naming `variable`.
StoreAddress parse_store_address(std::string_view text, std::string_view variable = "FRUGAL_ADDR");

struct TcpStoreLimits {
  // Largest frame either side accepts (the length prefix is checked before any allocation).
  std::size_t max_message_bytes = std::size_t{1} << 20;
  // Total bytes of keys and values the server keeps.
  std::size_t max_store_bytes = std::size_t{64} << 20;
  // A connection must complete its handshake (and any started frame) within this time, so a
  // silent or trickling client cannot hold the server's resources.
  std::chrono::milliseconds handshake_timeout{10'000};
};

struct TcpBootstrapOptions {
  int rank = 0;
  int world_size = 1;
  // Rank 0 listens on exactly this host (127.0.0.1 unless told otherwise); every rank connects
  // to it. Port 0 is for in-process tests only (the server picks one).
  StoreAddress address;
  // Shared secret; empty means none. Compared in constant time.
  std::string token;
  // Bound on connecting (with retries while rank 0 is not up yet) and on every wait.
  std::chrono::milliseconds timeout{60'000};
  TcpStoreLimits limits;
};

// From FRUGAL_RANK, FRUGAL_WORLD_SIZE (both required), FRUGAL_ADDR (default 127.0.0.1:29400),
// FRUGAL_TOKEN (optional) and FRUGAL_TIMEOUT (seconds; default 60). Throws InvalidArgument naming
// the variable that is missing or malformed.
TcpBootstrapOptions tcp_bootstrap_options_from_env();

// The server side of the store; rank 0 of make_tcp_bootstrap runs one. Serves on a thread of its
// own. Clients must say hello with the same world size and token, and a rank in range that is not
// connected already; anything else is answered with an error naming the problem and
// disconnected. The destructor waits (at most `timeout`) for the clients that said hello to
// disconnect, so that replies in flight are not lost.
class TcpStoreServer {
 public:
  TcpStoreServer(const StoreAddress& listen, int world_size, std::string token,
                 std::chrono::milliseconds timeout, TcpStoreLimits limits = {});
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  // The port actually bound (differs from the requested one when that was 0).
  std::uint16_t port() const noexcept;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// One rank's connection to the store. Connecting retries until options.timeout while the server
// is not up yet. Keys are at most 256 bytes; values at most limits.max_message_bytes minus a
// small header.
class TcpStoreClient {
 public:
  explicit TcpStoreClient(const TcpBootstrapOptions& options);
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  void set(std::string_view key, std::span<const std::byte> value);
  // Blocks until some client has set `key`; throws Timeout after options.timeout.
  std::vector<std::byte> get(std::string_view key);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Rank 0 serves the store and is also a client; allgather sets "<round>/<rank>" and gets the
// others' keys. Creating it connects (so it fails early on bad configuration).
std::unique_ptr<Bootstrap> make_tcp_bootstrap(const TcpBootstrapOptions& options);

}  // namespace frugal

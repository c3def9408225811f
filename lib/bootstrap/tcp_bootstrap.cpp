// The launcher-free bootstrap: configuration from FRUGAL_* variables and an allgather built on
// the TCP store (rank 0 serves it and is also a client).

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string>

#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"

namespace frugal {

namespace {

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

// Whole decimal number in [low, high]; anything else is InvalidArgument naming `name`.
long parse_integer(std::string_view text, std::string_view name, long low, long high) {
  long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < low || value > high) {
    throw Error(ErrorCode::InvalidArgument, std::string(name) + ": expected an integer in " +
                                                std::to_string(low) + ".." + std::to_string(high) +
                                                ", got '" + std::string(text) + "'");
  }
  return value;
}

class TcpBootstrap final : public Bootstrap {
 public:
  explicit TcpBootstrap(const TcpBootstrapOptions& options) : options_(options) {
    if (options.rank == 0) {
      server_ = std::make_unique<TcpStoreServer>(options.address, options.world_size, options.token,
                                                 options.timeout, options.limits);
      options_.address.port = server_->port();
    }
    client_ = std::make_unique<TcpStoreClient>(options_);
  }

  int rank() const noexcept override { return options_.rank; }
  int size() const noexcept override { return options_.world_size; }
  std::string_view name() const noexcept override { return "tcp-store"; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    const std::string prefix = "allgather/" + std::to_string(round_++) + "/";
    client_->set(prefix + std::to_string(options_.rank), mine);
    std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(options_.world_size));
    for (int r = 0; r < options_.world_size; ++r) {
      if (r == options_.rank) {
        all[static_cast<std::size_t>(r)].assign(mine.begin(), mine.end());
      } else {
        all[static_cast<std::size_t>(r)] = client_->get(prefix + std::to_string(r));
      }
    }
    return all;
  }

 private:
  TcpBootstrapOptions options_;
  // Declared before the client: destroyed after it, so that rank 0's own connection is gone when
  // the server waits for its clients to leave.
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<TcpStoreClient> client_;
  std::uint64_t round_ = 0;
};

}  // namespace

StoreAddress parse_store_address(std::string_view text, std::string_view variable) {
  auto bad = [&](const std::string& why) {
    return Error(ErrorCode::InvalidArgument, std::string(variable) + ": " + why + " in '" +
                                                 std::string(text) +
                                                 "' (expected host:port, [ipv6]:port or :port)");
  };
  StoreAddress address;
  std::string_view port_text = text;
  if (!text.empty() && text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw bad("unterminated [ipv6] address or missing port");
    }
    address.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else if (const std::size_t colon = text.rfind(':'); colon != std::string_view::npos) {
    if (text.find(':') != colon) throw bad("IPv6 addresses need brackets");
    if (colon > 0) address.host = std::string(text.substr(0, colon));
    port_text = text.substr(colon + 1);
  }
  if (address.host.empty()) throw bad("empty host");
  std::uint16_t port = 0;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port == 0) {
    throw bad("port must be a number in 1..65535");
  }
  address.port = port;
  return address;
}

TcpBootstrapOptions tcp_bootstrap_options_from_env() {
  TcpBootstrapOptions options;
  const auto size_text = env("FRUGAL_WORLD_SIZE");
  const auto rank_text = env("FRUGAL_RANK");
  if (!size_text || !rank_text) {
    throw Error(ErrorCode::InvalidArgument,
                std::string(!size_text ? "FRUGAL_WORLD_SIZE" : "FRUGAL_RANK") +
                    " is not set (start the ranks with scripts/launch -np N, or set FRUGAL_RANK, "
                    "FRUGAL_WORLD_SIZE and FRUGAL_ADDR yourself)");
  }
  options.world_size = static_cast<int>(parse_integer(*size_text, "FRUGAL_WORLD_SIZE", 1, 1 << 20));
  options.rank =
      static_cast<int>(parse_integer(*rank_text, "FRUGAL_RANK", 0, options.world_size - 1));
  if (const auto addr = env("FRUGAL_ADDR")) options.address = parse_store_address(*addr);
  if (const auto token = env("FRUGAL_TOKEN")) options.token = *token;
  if (const auto timeout = env("FRUGAL_TIMEOUT")) {
    options.timeout = parse_timeout_seconds(*timeout, "FRUGAL_TIMEOUT");
  }
  return options;
}

std::unique_ptr<Bootstrap> make_tcp_bootstrap(const TcpBootstrapOptions& options) {
  return std::make_unique<TcpBootstrap>(options);
}

}  // namespace frugal

// The TCP rendezvous store and the TCP bootstrap, in one process: ranks are threads, bad clients
// are raw sockets that speak (or fail to speak) the wire format.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"
#include "frugal/transport.hpp"

namespace frugal {
namespace {

using namespace std::chrono_literals;

std::vector<std::byte> bytes(std::string_view text) {
  const auto b = std::as_bytes(std::span(text));
  return {b.begin(), b.end()};
}

std::string text(const std::vector<std::byte>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

TcpBootstrapOptions client_options(std::uint16_t port, int rank, int world_size,
                                   std::string token = "secret") {
  TcpBootstrapOptions o;
  o.rank = rank;
  o.world_size = world_size;
  o.address = {"127.0.0.1", port};
  o.token = std::move(token);
  o.timeout = 3s;
  return o;
}

TcpStoreLimits quick_limits() {
  TcpStoreLimits limits;
  limits.handshake_timeout = 300ms;
  limits.max_message_bytes = 4096;
  return limits;
}

// Throws Error and returns it, or fails the test.
template <typename F>
Error expect_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no frugal::Error thrown";
  return Error(ErrorCode::Internal, "none");
}

bool contains(const Error& e, std::string_view what) {
  return std::string(e.what()).find(what) != std::string::npos;
}

// A raw TCP connection to the store, for speaking bad protocol.
class RawSocket {
 public:
  explicit RawSocket(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{2, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~RawSocket() { ::close(fd_); }
  bool connected() const { return connected_; }
  void send_bytes(const std::vector<unsigned char>& data) {
    ASSERT_EQ(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(data.size()));
  }
  // Everything the server sends until it closes (or 2 s pass).
  std::string read_all() {
    std::string out;
    char buffer[512];
    for (;;) {
      const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      out.append(buffer, static_cast<std::size_t>(n));
    }
    return out;
  }
  // True if the server closed the connection (recv returns 0) within 2 s.
  bool closed_by_server() {
    char c;
    return ::recv(fd_, &c, 1, 0) == 0;
  }

 private:
  int fd_;
  bool connected_ = false;
};

std::vector<unsigned char> frame_header(std::uint32_t length) {
  return {static_cast<unsigned char>(length & 0xff),
          static_cast<unsigned char>((length >> 8) & 0xff),
          static_cast<unsigned char>((length >> 16) & 0xff),
          static_cast<unsigned char>((length >> 24) & 0xff)};
}

TEST(TcpStore, SetAndGetAcrossClientsIncludingAWaitingGet) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s);
  TcpStoreClient a(client_options(server.port(), 0, 2));
  TcpStoreClient b(client_options(server.port(), 1, 2));
  auto later = std::async(std::launch::async, [&] { return b.get("key"); });
  std::this_thread::sleep_for(50ms);
  a.set("key", bytes("value"));
  EXPECT_EQ(text(later.get()), "value");
  EXPECT_EQ(text(a.get("key")), "value");
  a.set("empty", {});
  EXPECT_TRUE(b.get("empty").empty());
}

TEST(TcpStore, GetOfAKeyNobodySetsTimesOut) {
  TcpStoreServer server({"127.0.0.1", 0}, 1, "secret", 3s);
  auto options = client_options(server.port(), 0, 1);
  options.timeout = 300ms;
  TcpStoreClient a(options);
  const auto start = Clock::now();
  const Error e = expect_error([&] { a.get("never"); });
  EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
  EXPECT_TRUE(contains(e, "never")) << e.what();
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(TcpStore, WrongTokenIsRefusedByName) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s);
  const Error e =
      expect_error([&] { TcpStoreClient c(client_options(server.port(), 1, 2, "guess")); });
  EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
  EXPECT_TRUE(contains(e, "token")) << e.what();
  // The server keeps serving the legitimate ranks.
  TcpStoreClient ok(client_options(server.port(), 1, 2));
  ok.set("k", bytes("v"));
}

TEST(TcpStore, WrongWorldSizeIsRefusedNamingBothSizes) {
  TcpStoreServer server({"127.0.0.1", 0}, 4, "secret", 3s);
  const Error e = expect_error([&] { TcpStoreClient c(client_options(server.port(), 1, 3)); });
  EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
  EXPECT_TRUE(contains(e, "world size 3")) << e.what();
  EXPECT_TRUE(contains(e, "4")) << e.what();
}

TEST(TcpStore, DuplicateRankIsRefused) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s);
  TcpStoreClient first(client_options(server.port(), 1, 2));
  const Error e = expect_error([&] { TcpStoreClient c(client_options(server.port(), 1, 2)); });
  EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
  EXPECT_TRUE(contains(e, "already connected")) << e.what();
}

TEST(TcpStore, OversizeFrameIsRefusedBeforeAllocation) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s, quick_limits());
  RawSocket raw(server.port());
  ASSERT_TRUE(raw.connected());
  raw.send_bytes(frame_header(0x7fffffff));  // 2 GiB announced, nothing sent
  const std::string reply = raw.read_all();
  EXPECT_NE(reply.find("exceeds the store's limit of 4096 bytes"), std::string::npos) << reply;
  // And the server still works.
  TcpStoreClient ok(client_options(server.port(), 0, 2));
  ok.set("k", bytes("v"));
}

TEST(TcpStore, OversizeValueIsRejectedByTheClientNamingTheLimit) {
  TcpStoreServer server({"127.0.0.1", 0}, 1, "secret", 3s, quick_limits());
  auto options = client_options(server.port(), 0, 1);
  options.limits = quick_limits();
  TcpStoreClient c(options);
  const std::vector<std::byte> big(5000);
  const Error e = expect_error([&] { c.set("big", big); });
  EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
  EXPECT_TRUE(contains(e, "4096")) << e.what();
}

TEST(TcpStore, SilentClientIsDisconnectedAndDoesNotBlockOthers) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s, quick_limits());
  RawSocket silent(server.port());
  ASSERT_TRUE(silent.connected());
  TcpStoreClient ok(client_options(server.port(), 0, 2));  // served while the silent one idles
  ok.set("k", bytes("v"));
  const auto start = Clock::now();
  EXPECT_TRUE(silent.closed_by_server());
  EXPECT_LT(Clock::now() - start, 1500ms);
}

TEST(TcpStore, ClientStallingMidFrameIsDisconnected) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s, quick_limits());
  RawSocket raw(server.port());
  ASSERT_TRUE(raw.connected());
  raw.send_bytes(frame_header(100));
  raw.send_bytes({0x01, 0x01});  // 2 of 100 bytes, then silence
  EXPECT_TRUE(raw.closed_by_server());
}

TEST(TcpStore, GarbageInsteadOfHelloIsRefused) {
  TcpStoreServer server({"127.0.0.1", 0}, 2, "secret", 3s, quick_limits());
  RawSocket raw(server.port());
  ASSERT_TRUE(raw.connected());
  std::vector<unsigned char> frame = frame_header(3);
  frame.insert(frame.end(), {0x02, 0x00, 0x00});  // a set before the hello
  raw.send_bytes(frame);
  const std::string reply = raw.read_all();
  EXPECT_NE(reply.find("expected a hello"), std::string::npos) << reply;
}

TEST(TcpStore, ConnectRetriesUntilTheServerComesUp) {
  // Find a free port, start the client first, the server 300 ms later.
  std::uint16_t port = 0;
  {
    TcpStoreServer probe({"127.0.0.1", 0}, 1, "", 1s);
    port = probe.port();
  }
  auto client = std::async(std::launch::async, [&] {
    TcpStoreClient c(client_options(port, 0, 1, ""));
    c.set("k", bytes("v"));
    return text(c.get("k"));
  });
  std::this_thread::sleep_for(300ms);
  TcpStoreServer server({"127.0.0.1", port}, 1, "", 3s);
  EXPECT_EQ(client.get(), "v");
}

TEST(TcpStore, NoServerIsTimeoutNamingTheAddress) {
  std::uint16_t port = 0;
  {
    TcpStoreServer probe({"127.0.0.1", 0}, 1, "", 1s);
    port = probe.port();
  }
  auto options = client_options(port, 0, 1);
  options.timeout = 400ms;
  const auto start = Clock::now();
  const Error e = expect_error([&] { TcpStoreClient c(options); });
  EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
  EXPECT_TRUE(contains(e, "127.0.0.1:" + std::to_string(port))) << e.what();
  EXPECT_LT(Clock::now() - start, 2s);
}

TEST(TcpStore, ListensOnLoopbackOnly) {
  TcpStoreServer server({"127.0.0.1", 0}, 1, "", 1s);
  // Connecting through a non-loopback address of this host must fail; find one via UDP connect.
  const int probe = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(53);
  ::inet_pton(AF_INET, "10.255.255.1", &remote.sin_addr);
  sockaddr_in local{};
  socklen_t length = sizeof local;
  const bool have_route =
      ::connect(probe, reinterpret_cast<sockaddr*>(&remote), sizeof remote) == 0 &&
      ::getsockname(probe, reinterpret_cast<sockaddr*>(&local), &length) == 0;
  ::close(probe);
  if (!have_route || local.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
    GTEST_SKIP() << "no non-loopback address on this host";
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  local.sin_port = htons(server.port());
  EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&local), sizeof local), 0)
      << "the store answered on a non-loopback address";
  ::close(fd);
}

TEST(TcpBootstrap, AllgatherAmongThreadsInRankOrder) {
  constexpr int kRanks = 4;
  std::uint16_t port = 0;
  {
    TcpStoreServer probe({"127.0.0.1", 0}, 1, "", 1s);
    port = probe.port();
  }
  std::vector<std::future<std::vector<std::vector<std::byte>>>> results;
  for (int r = 0; r < kRanks; ++r) {
    results.push_back(std::async(std::launch::async, [r, port] {
      const auto bootstrap = make_tcp_bootstrap(client_options(port, r, kRanks, "t"));
      auto first = bootstrap->allgather(bytes("rank" + std::to_string(r)));
      auto second = bootstrap->allgather(bytes(std::string(static_cast<std::size_t>(r), 'x')));
      first.insert(first.end(), second.begin(), second.end());
      return first;
    }));
  }
  for (int r = 0; r < kRanks; ++r) {
    const auto all = results[static_cast<std::size_t>(r)].get();
    ASSERT_EQ(all.size(), 2u * kRanks);
    for (int q = 0; q < kRanks; ++q) {
      EXPECT_EQ(text(all[static_cast<std::size_t>(q)]), "rank" + std::to_string(q));
      EXPECT_EQ(all[static_cast<std::size_t>(kRanks + q)].size(), static_cast<std::size_t>(q));
    }
  }
}

TEST(TcpBootstrap, MissingRankIsTimeoutNotHang) {
  std::uint16_t port = 0;
  {
    TcpStoreServer probe({"127.0.0.1", 0}, 1, "", 1s);
    port = probe.port();
  }
  auto options = client_options(port, 0, 2, "");
  options.timeout = 400ms;
  const auto start = Clock::now();
  const Error e = expect_error([&] {
    const auto bootstrap = make_tcp_bootstrap(options);
    bootstrap->allgather(bytes("alone"));
  });
  EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
  EXPECT_LT(Clock::now() - start, 3s);
}

class EnvGuard {
 public:
  explicit EnvGuard(std::initializer_list<std::pair<const char*, const char*>> values) {
    for (const char* name :
         {"FRUGAL_RANK", "FRUGAL_WORLD_SIZE", "FRUGAL_ADDR", "FRUGAL_TOKEN", "FRUGAL_TIMEOUT"}) {
      ::unsetenv(name);
    }
    for (const auto& [name, value] : values) ::setenv(name, value, 1);
  }
  ~EnvGuard() {
    for (const char* name :
         {"FRUGAL_RANK", "FRUGAL_WORLD_SIZE", "FRUGAL_ADDR", "FRUGAL_TOKEN", "FRUGAL_TIMEOUT"}) {
      ::unsetenv(name);
    }
  }
};

TEST(TcpBootstrapEnv, ReadsEveryVariable) {
  EnvGuard env({{"FRUGAL_RANK", "2"},
                {"FRUGAL_WORLD_SIZE", "4"},
                {"FRUGAL_ADDR", "10.1.2.3:5000"},
                {"FRUGAL_TOKEN", "tok"},
                {"FRUGAL_TIMEOUT", "2.5"}});
  const TcpBootstrapOptions o = tcp_bootstrap_options_from_env();
  EXPECT_EQ(o.rank, 2);
  EXPECT_EQ(o.world_size, 4);
  EXPECT_EQ(o.address.host, "10.1.2.3");
  EXPECT_EQ(o.address.port, 5000);
  EXPECT_EQ(o.token, "tok");
  EXPECT_EQ(o.timeout, 2500ms);
}

TEST(TcpBootstrapEnv, BadValuesNameTheVariable) {
  auto code_and_text = [](std::initializer_list<std::pair<const char*, const char*>> values) {
    EnvGuard env(values);
    return expect_error([] { tcp_bootstrap_options_from_env(); });
  };
  EXPECT_TRUE(contains(code_and_text({{"FRUGAL_WORLD_SIZE", "4"}}), "FRUGAL_RANK"));
  EXPECT_TRUE(contains(code_and_text({{"FRUGAL_RANK", "0"}}), "FRUGAL_WORLD_SIZE"));
  EXPECT_TRUE(
      contains(code_and_text({{"FRUGAL_RANK", "4"}, {"FRUGAL_WORLD_SIZE", "4"}}), "FRUGAL_RANK"));
  EXPECT_TRUE(
      contains(code_and_text({{"FRUGAL_RANK", "x"}, {"FRUGAL_WORLD_SIZE", "4"}}), "FRUGAL_RANK"));
  EXPECT_TRUE(contains(
      code_and_text(
          {{"FRUGAL_RANK", "0"}, {"FRUGAL_WORLD_SIZE", "2"}, {"FRUGAL_ADDR", "host:99999"}}),
      "FRUGAL_ADDR"));
  EXPECT_TRUE(contains(
      code_and_text({{"FRUGAL_RANK", "0"}, {"FRUGAL_WORLD_SIZE", "2"}, {"FRUGAL_TIMEOUT", "-1"}}),
      "FRUGAL_TIMEOUT"));
}

TEST(StoreAddress, Forms) {
  EXPECT_EQ(parse_store_address("example:80").host, "example");
  EXPECT_EQ(parse_store_address(":1234").host, "127.0.0.1");
  EXPECT_EQ(parse_store_address("1234").port, 1234);
  EXPECT_EQ(parse_store_address("[::1]:7").host, "::1");
  EXPECT_THROW(parse_store_address("::1:7"), Error);
  EXPECT_THROW(parse_store_address("host:"), Error);
  EXPECT_THROW(parse_store_address("host:0"), Error);
}

}  // namespace
}  // namespace frugal

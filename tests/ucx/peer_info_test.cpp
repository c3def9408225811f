// The peer-info blob and the same-host decision behind auto error mode: symmetric for every pair
// (UCX 1.13 fails an endpoint whose two ends chose different error modes), true only when boot id,
// network namespace, pid namespace and host name all agree, and carried intact through the blob;
// and the error-mode setting: default auto, bad values refused, ranks must agree; and the protocol
// of peer-mode endpoints over TCP alone: eager at every size unless UCX_RNDV_THRESH is set.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "frugal/bootstrap.hpp"
#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"
#include "frugal/ucx.hpp"
#include "ucx_peer_info.hpp"

namespace {

using frugal::transport::ucx::decode;
using frugal::transport::ucx::encode;
using frugal::transport::ucx::local_peer_info;
using frugal::transport::ucx::PeerInfo;
using frugal::transport::ucx::same_host;

PeerInfo node(const std::string& boot, std::uint64_t net, std::uint64_t pid_ns,
              const std::string& host, std::int32_t pid = 100) {
  PeerInfo info;
  info.pid = pid;
  info.boot_id = boot;
  info.net_namespace = net;
  info.pid_namespace = pid_ns;
  info.hostname = host;
  return info;
}

const std::string kBootA = "0f9b6c4e-1d2a-4e5f-8a7b-1c2d3e4f5a6b";
const std::string kBootB = "7e1a2b3c-4d5e-4f60-9a8b-7c6d5e4f3a2b";
// Every host's initial network namespace has this inode: equal numbers on two machines.
constexpr std::uint64_t kInitNet = 4026531840;
constexpr std::uint64_t kInitPid = 4026531836;

// Ranks as they occur: two on one host (differing only in pid), one in a network namespace of
// its own (bench/cluster/run), one in its own UTS namespace only, one in its own pid namespace,
// one on another machine whose namespace inodes and host name repeat ours, one without a boot id.
std::vector<PeerInfo> cluster() {
  return {
      node(kBootA, kInitNet, kInitPid, "n1", 100), node(kBootA, kInitNet, kInitPid, "n1", 101),
      node(kBootA, 4026532300, kInitPid, "n1"),    node(kBootA, kInitNet, kInitPid, "fc1-node2"),
      node(kBootA, kInitNet, 4026532400, "n1"),    node(kBootB, kInitNet, kInitPid, "n1"),
      node("", kInitNet, kInitPid, "n1"),
  };
}

TEST(UcxPeerInfo, SameHostOnlyWhenEverythingAgrees) {
  const std::vector<PeerInfo> c = cluster();
  EXPECT_TRUE(same_host(c[0], c[0]));
  EXPECT_TRUE(same_host(c[0], c[1])) << "two processes of one host and namespace";
  EXPECT_FALSE(same_host(c[0], c[2])) << "another network namespace is another host";
  EXPECT_FALSE(same_host(c[0], c[3])) << "another host name (UTS namespace)";
  EXPECT_FALSE(same_host(c[0], c[4])) << "another pid namespace: no pidfd probe possible";
  EXPECT_FALSE(same_host(c[0], c[5])) << "another boot id: another machine, same inodes";
  EXPECT_FALSE(same_host(c[0], c[6])) << "unknown boot id";
  EXPECT_FALSE(same_host(c[6], c[6])) << "unknown boot id, even with itself";
  PeerInfo no_net = c[0];
  no_net.net_namespace = 0;
  EXPECT_FALSE(same_host(no_net, no_net)) << "unreadable /proc/self/ns/net";
}

TEST(UcxPeerInfo, SameHostIsSymmetricForEveryPair) {
  const std::vector<PeerInfo> c = cluster();
  int local_pairs = 0;
  for (std::size_t i = 0; i < c.size(); ++i) {
    for (std::size_t j = 0; j < c.size(); ++j) {
      EXPECT_EQ(same_host(c[i], c[j]), same_host(c[j], c[i])) << "ranks " << i << " and " << j;
      if (i != j && same_host(c[i], c[j])) ++local_pairs;
    }
  }
  EXPECT_EQ(local_pairs, 2);  // 0-1 and 1-0, nothing else
}

TEST(UcxPeerInfo, ThisProcessIsOnItsOwnHost) {
  const PeerInfo me = local_peer_info();
  ASSERT_FALSE(me.boot_id.empty()) << "no /proc/sys/kernel/random/boot_id";
  EXPECT_NE(me.net_namespace, 0u);
  EXPECT_NE(me.pid_namespace, 0u);
  EXPECT_FALSE(me.hostname.empty());
  EXPECT_TRUE(same_host(me, me));
}

TEST(UcxPeerInfo, BlobCarriesEveryField) {
  PeerInfo info = node(kBootB, 4026532300, 4026532400, "fc123-node7", 4242);
  info.error_mode = 2;
  const PeerInfo back = decode(encode(info), 5);
  EXPECT_EQ(back.pid, 4242);
  EXPECT_EQ(back.boot_id, kBootB);
  EXPECT_EQ(back.net_namespace, 4026532300u);
  EXPECT_EQ(back.pid_namespace, 4026532400u);
  EXPECT_EQ(back.hostname, "fc123-node7");
  EXPECT_EQ(back.error_mode, 2);
  EXPECT_TRUE(same_host(back, info));
  // A 64-character host name (Linux's maximum) fills its field without a terminator.
  info.hostname = std::string(64, 'h');
  EXPECT_EQ(decode(encode(info), 5).hostname, info.hostname);
}

TEST(UcxPeerInfo, OldOrForeignBlobIsMismatchNamingTheRank) {
  PeerInfo info = node(kBootA, kInitNet, kInitPid, "n1");
  std::vector<std::byte> blob = encode(info);
  blob[7] = std::byte{'1'};  // the version-1 magic, "frugalU1"
  try {
    decode(blob, 3);
    FAIL() << "a version-1 blob was accepted";
  } catch (const frugal::Error& e) {
    EXPECT_EQ(e.code(), frugal::ErrorCode::Mismatch);
    EXPECT_NE(std::string(e.what()).find("rank 3"), std::string::npos) << e.what();
  }
  EXPECT_THROW(decode(std::vector<std::byte>(8), 1), frugal::Error);
}

// One rank: allgather returns what it was given.
class SoloBootstrap final : public frugal::Bootstrap {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  std::string_view name() const noexcept override { return "solo"; }
  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    return {std::vector<std::byte>(mine.begin(), mine.end())};
  }
};

TEST(UcxErrorMode, DefaultAutoGivesAnEndpointOnThisHostNoUcxErrorHandling) {
  ::unsetenv("FRUGAL_UCX_ERROR_MODE");
  SoloBootstrap solo;
  const auto transport = frugal::make_ucx_transport(solo);
  const std::string info = frugal::ucx_endpoint_info(*transport, 0);
  EXPECT_EQ(info.rfind("# frugal: err_mode=none (peer on this host)", 0), 0u) << info;
  frugal::UcxOptions peer;
  peer.error_mode = frugal::UcxErrorMode::Peer;
  const auto forced = frugal::make_ucx_transport(solo, peer);
  EXPECT_EQ(
      frugal::ucx_endpoint_info(*forced, 0).rfind("# frugal: err_mode=peer (peer on this host)", 0),
      0u);
}

TEST(UcxErrorMode, UnknownSettingIsInvalidArgumentNamingTheVariable) {
  ::setenv("FRUGAL_UCX_ERROR_MODE", "sometimes", 1);
  SoloBootstrap solo;
  try {
    frugal::make_ucx_transport(solo);
    ::unsetenv("FRUGAL_UCX_ERROR_MODE");
    FAIL() << "FRUGAL_UCX_ERROR_MODE=sometimes was accepted";
  } catch (const frugal::Error& e) {
    ::unsetenv("FRUGAL_UCX_ERROR_MODE");
    EXPECT_EQ(e.code(), frugal::ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("FRUGAL_UCX_ERROR_MODE"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sometimes"), std::string::npos) << e.what();
  }
}

// Two ranks (threads, TCP-store bootstrap) with different settings: both get Mismatch naming
// both settings, before any endpoint exists.
TEST(UcxErrorMode, RanksWithDifferentSettingsFailWithMismatch) {
  using namespace std::chrono_literals;
  std::uint16_t port = 0;
  {
    frugal::TcpStoreServer probe({"127.0.0.1", 0}, 1, "", 1s);
    port = probe.port();
  }
  const frugal::UcxErrorMode modes[2] = {frugal::UcxErrorMode::Auto, frugal::UcxErrorMode::Peer};
  std::vector<std::future<std::string>> results;
  for (int r = 0; r < 2; ++r) {
    results.push_back(std::async(std::launch::async, [r, port, &modes]() -> std::string {
      frugal::TcpBootstrapOptions o;
      o.rank = r;
      o.world_size = 2;
      o.address = {"127.0.0.1", port};
      o.timeout = 10s;
      const auto bootstrap = frugal::make_tcp_bootstrap(o);
      frugal::UcxOptions options;
      options.error_mode = modes[r];
      try {
        frugal::make_ucx_transport(*bootstrap, options);
      } catch (const frugal::Error& e) {
        return e.code() == frugal::ErrorCode::Mismatch ? e.what()
                                                       : "wrong code: " + std::string(e.what());
      }
      return "no error";
    }));
  }
  for (auto& result : results) {
    const std::string what = result.get();
    EXPECT_NE(what.find("error mode"), std::string::npos) << what;
    EXPECT_NE(what.find("auto"), std::string::npos) << what;
    EXPECT_NE(what.find("peer"), std::string::npos) << what;
    EXPECT_EQ(what.find("wrong code"), std::string::npos) << what;
  }
}

}  // namespace

namespace {

// Sets an environment variable for one scope and restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The "tag_send:" line of ucp_ep_print_info: which protocol UCX uses from which size on.
std::string tag_send_line(const std::string& info) {
  const std::size_t at = info.find(" tag_send:");
  return at == std::string::npos ? "" : info.substr(at, info.find('\n', at) - at);
}

}  // namespace

TEST(UcxProtocol, PeerModeOverTcpOnlySendsEveryMessageEagerly) {
  // A rendezvous send moves nothing until both ranks have progressed (ucx_transport.cpp).
  SoloBootstrap solo;
  frugal::UcxOptions peer;
  peer.error_mode = frugal::UcxErrorMode::Peer;
  const ScopedEnv tls("UCX_TLS", "tcp");
  const auto transport = frugal::make_ucx_transport(solo, peer);
  const std::string line = tag_send_line(frugal::ucx_endpoint_info(*transport, 0));
  ASSERT_NE(line.find("egr/"), std::string::npos) << line;
  EXPECT_EQ(line.find("rndv"), std::string::npos) << line;
}

TEST(UcxProtocol, UcxRndvThreshInTheEnvironmentStillWins) {
  SoloBootstrap solo;
  frugal::UcxOptions peer;
  peer.error_mode = frugal::UcxErrorMode::Peer;
  const ScopedEnv tls("UCX_TLS", "tcp");
  const ScopedEnv thresh("UCX_RNDV_THRESH", "65536");
  const auto transport = frugal::make_ucx_transport(solo, peer);
  const std::string line = tag_send_line(frugal::ucx_endpoint_info(*transport, 0));
  EXPECT_NE(line.find("65536..<rndv>"), std::string::npos) << line;
}

// Kills one rank (SIGKILL) in the middle of a long allreduce loop over UCX and checks that every
// other rank leaves with PeerFailure or Timeout within twice the configured timeout. Runs
// scripts/launch with peer_failure_worker in real processes; prints the measured detection times.
//
// argv[1] = scripts/launch, argv[2] = the worker (passed by meson).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "peer_failure_report.hpp"

namespace {

std::string g_launch;
std::string g_worker;

constexpr double kTimeoutSeconds = 2.0;

struct Scenario {
  std::string name;
  std::string env;  // extra VAR=value settings
  int ranks = 3;
  int victim = 1;
  // What survivors may report: "peer failure", "timeout", or both.
  // false: PeerFailure only when it names a rank other than the victim (a survivor that gave up
  // and exited first is a failed peer; the stopped victim must never be called one).
  bool allow_peer_failure = true;
  bool allow_timeout = true;
  int grace = 20;  // scripts/launch --grace: the stopped victim only goes when this runs out
  // Some survivor must report PeerFailure within 0.25 s (the first to wait on the victim).
  bool fast = false;
  // Every PeerFailure message must name the victim (as the failed peer or among those failed
  // before), even on a rank that waited on a survivor.
  bool name_victim = false;
};

struct Outcome : frugal::test::PeerFailureReport {
  std::string output;
};

// Whether a PeerFailure message blames `rank` ("peer r is unreachable" or "peer r (" in the list
// of failed peers).
bool names_failed(const std::string& what, int rank) {
  const std::string r = std::to_string(rank);
  return what.find("peer " + r + " is unreachable") != std::string::npos ||
         what.find("peer " + r + " (") != std::string::npos;
}

Outcome run(const Scenario& s) {
  char timeout[32];
  std::snprintf(timeout, sizeof timeout, "%g", kTimeoutSeconds);
  const std::string command = "env FRUGAL_TIMEOUT=" + std::string(timeout) +
                              " FRUGAL_TEST_VICTIM=" + std::to_string(s.victim) +
                              " FRUGAL_TEST_KILL_AFTER_MS=1000 " + s.env + " " + g_launch +
                              " -np " + std::to_string(s.ranks) + " --grace " +
                              std::to_string(s.grace) + " " + g_worker + " 2>&1";
  Outcome out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char line[4096];
  while (std::fgets(line, sizeof line, pipe) != nullptr) out.output += line;
  ::pclose(pipe);
  static_cast<frugal::test::PeerFailureReport&>(out) =
      frugal::test::parse_peer_failure_output(out.output);
  return out;
}

void check(const Scenario& s) {
  const Outcome out = run(s);
  ASSERT_GE(out.killed_at, 0) << "the victim never reported its kill:\n" << out.output;
  EXPECT_TRUE(out.finished.empty()) << "a survivor finished the loop without an error:\n"
                                    << out.output;
  std::printf("[%s] timeout %.1f s, bound %.1f s:", s.name.c_str(), kTimeoutSeconds,
              2 * kTimeoutSeconds);
  double first_peer_failure = 1e9;
  for (int r = 0; r < s.ranks; ++r) {
    if (r == s.victim) continue;
    const auto it = out.survivors.find(r);
    ASSERT_NE(it, out.survivors.end()) << "rank " << r << " reported nothing:\n" << out.output;
    const auto& [code, detected_at, what] = it->second;
    const double seconds = static_cast<double>(detected_at - out.killed_at) / 1e9;
    std::printf(" rank %d %s after %.3f s;", r, code.c_str(), seconds);
    const bool allowed =
        (code == "peer failure" && (s.allow_peer_failure || !names_failed(what, s.victim))) ||
        (code == "timeout" && s.allow_timeout);
    EXPECT_TRUE(allowed) << "rank " << r << " reported '" << code << "':\n" << out.output;
    EXPECT_LE(seconds, 2 * kTimeoutSeconds) << "rank " << r << ":\n" << out.output;
    if (code == "peer failure" && s.name_victim) {
      EXPECT_TRUE(names_failed(what, s.victim)) << "rank " << r << ": " << what;
    }
    if (code == "peer failure") first_peer_failure = std::min(first_peer_failure, seconds);
  }
  std::printf("\n");
  std::fflush(stdout);
  if (s.fast) {
    EXPECT_LE(first_peer_failure, 0.25) << out.output;
  }
}

// Default configuration (auto: every rank on this host, so callback-mode endpoints): UCX picks shm
// + CMA; frugal's pidfd probe sees the death at once on the first rank that waits on the victim.
// Ranks waiting on a survivor see that survivor's exit or time out.
TEST(UcxPeerFailure, SharedMemoryDefaultIsPeerFailureAtOnce) {
  check({"shm+cma, auto mode (callback endpoints), pidfd probe", "", 3, 1, true, true, 20, true,
         true});
}

// Peer mode, frugal's probe off: what UCX detects on its own (TCP between local ranks, as across
// network namespaces; reset connections and keepalive).
TEST(UcxPeerFailure, PeerModeTcpDetectedByUcx) {
  check({"tcp, peer mode, no probe", "FRUGAL_UCX_ERROR_MODE=peer FRUGAL_UCX_WATCH_PEERS=0", 3, 1});
}

// Rank 0 (which served the bootstrap store) dies among 4: the failure cascades through ranks that
// never talked to it directly.
TEST(UcxPeerFailure, RankZeroOfFour) {
  check({"shm+cma, auto mode, rank 0 of 4 killed", "", 4, 0, true, true, 20, false, true});
}

// A stopped (not dead) peer: nothing can tell it from a slow one, so every survivor must leave
// with Timeout, and within the bound.
TEST(UcxPeerFailure, StoppedPeerIsTimeout) {
  check({"shm+cma, SIGSTOP instead of SIGKILL", "FRUGAL_TEST_STOP=1", 3, 1, false, true, 1});
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SCRIPTS_LAUNCH PEER_FAILURE_WORKER\n", argv[0]);
    return 2;
  }
  g_launch = argv[1];
  g_worker = argv[2];
  return RUN_ALL_TESTS();
}

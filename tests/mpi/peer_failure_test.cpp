// Peer failure on the MPI transport (issue 8): mpirun runs peer_failure_worker; one rank stops
// (SIGSTOP) or dies (SIGKILL) in the middle of a long allreduce loop. Checks what frugal does and
// measures it: every survivor leaves with Timeout or PeerFailure within 2 x FRUGAL_TIMEOUT, its
// message names the peer it waited for, and the job exits non-zero.
//
// Open MPI itself: a stopped rank is invisible to it (frugal's deadline is all there is); a
// SIGKILLed rank is seen by mpirun's daemon, which aborts the whole job ("mpirun noticed that
// process rank N ... exited on signal 9") and SIGTERMs/SIGKILLs the survivors, typically faster
// than any timeout; the SIGKILL scenario checks that the job ends non-zero within the bound and
// that any survivor that did report reported PeerFailure or Timeout.
//
// argv[1] = mpirun, argv[2] = the worker (passed by meson).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "peer_failure_report.hpp"

namespace {

std::string g_mpirun;
std::string g_worker;

constexpr double kTimeoutSeconds = 2.0;

struct Outcome : frugal::test::PeerFailureReport {
  int exit_status = -1;
  double wall_seconds = 0;
  std::string output;
};

Outcome run(int ranks, int victim, bool stop, const std::string& mpirun_options = "") {
  char timeout[32];
  std::snprintf(timeout, sizeof timeout, "%g", kTimeoutSeconds);
  const std::string command = "env FRUGAL_TIMEOUT=" + std::string(timeout) +
                              " FRUGAL_TEST_VICTIM=" + std::to_string(victim) +
                              " FRUGAL_TEST_KILL_AFTER_MS=1000 FRUGAL_TEST_LINGER_MS=" +
                              std::to_string(static_cast<int>(2500 * kTimeoutSeconds)) +
                              " FRUGAL_TEST_STOP=" + (stop ? "1" : "0") + " " + g_mpirun +
                              " --allow-run-as-root --oversubscribe " + mpirun_options + " -np " +
                              std::to_string(ranks) + " " + g_worker + " 2>&1";
  Outcome out;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  char line[8192];
  while (std::fgets(line, sizeof line, pipe) != nullptr) out.output += line;
  const int status = ::pclose(pipe);
  out.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  static_cast<frugal::test::PeerFailureReport&>(out) =
      frugal::test::parse_peer_failure_output(out.output);
  return out;
}

bool allowed(const std::string& code) {
  return code == "peer failure" || code == "timeout";
}

// Every survivor reports Timeout or PeerFailure within the bound, naming the peer it waited for;
// at least one names the victim.
void check_survivors(int ranks, int victim, bool stop, const std::string& mpirun_options = "") {
  const Outcome out = run(ranks, victim, stop, mpirun_options);
  ASSERT_GE(out.killed_at, 0) << "the victim never reported:\n" << out.output;
  EXPECT_TRUE(out.finished.empty()) << out.output;
  // mpirun --enable-recovery exits 0 even though every survivor exited with status 3.
  if (mpirun_options.empty()) {
    EXPECT_NE(out.exit_status, 0) << out.output;
  }
  std::printf(
      "[mpi, %s rank %d of %d%s] timeout %.1f s, bound %.1f s:", stop ? "SIGSTOP" : "SIGKILL",
      victim, ranks, mpirun_options.empty() ? "" : (", " + mpirun_options).c_str(), kTimeoutSeconds,
      2 * kTimeoutSeconds);
  bool victim_named = false;
  for (int r = 0; r < ranks; ++r) {
    if (r == victim) continue;
    const auto it = out.survivors.find(r);
    ASSERT_NE(it, out.survivors.end()) << "rank " << r << " reported nothing:\n" << out.output;
    const double seconds = static_cast<double>(it->second.detected_at - out.killed_at) / 1e9;
    std::printf(" rank %d %s after %.3f s;", r, it->second.code.c_str(), seconds);
    EXPECT_TRUE(allowed(it->second.code)) << out.output;
    EXPECT_LE(seconds, 2 * kTimeoutSeconds) << "rank " << r << ":\n" << out.output;
    EXPECT_NE(it->second.what.find("peer "), std::string::npos) << it->second.what;
    victim_named |= it->second.what.find("peer " + std::to_string(victim)) != std::string::npos;
  }
  std::printf(" job exit %d after %.2f s\n", out.exit_status, out.wall_seconds);
  std::fflush(stdout);
  EXPECT_TRUE(victim_named) << "no survivor named rank " << victim << ":\n" << out.output;
}

TEST(MpiPeerFailure, StoppedPeerIsTimeoutOnEverySurvivor) {
  check_survivors(3, 1, true);
}

TEST(MpiPeerFailure, StoppedRankZeroOfFour) {
  check_survivors(4, 0, true);
}

// With --enable-recovery mpirun leaves the survivors of a SIGKILLed rank running: what frugal
// does on its own (the shared-memory transport reports nothing, so Timeout on the rank waiting
// for the dead one, PeerFailure on the others through frugal's failure notice).
TEST(MpiPeerFailure, KilledPeerWithRecoveryIsTimeoutOrPeerFailureOnEverySurvivor) {
  check_survivors(3, 1, false, "--enable-recovery");
  check_survivors(4, 0, false, "--enable-recovery");
}

// SIGKILL: Open MPI aborts the job itself; what matters is that nobody hangs or finishes.
TEST(MpiPeerFailure, KilledPeerEndsTheJobNonZeroWithinTheBound) {
  const Outcome out = run(3, 1, false);
  ASSERT_GE(out.killed_at, 0) << out.output;
  EXPECT_TRUE(out.finished.empty()) << out.output;
  EXPECT_NE(out.exit_status, 0) << out.output;
  // From the start of the job: ~1 s to the kill, then at most the bound.
  EXPECT_LE(out.wall_seconds, 1.0 + 2 * kTimeoutSeconds + 5.0) << out.output;
  std::printf("[mpi, SIGKILL rank 1 of 3] job exit %d after %.2f s;", out.exit_status,
              out.wall_seconds);
  for (const auto& [r, s] : out.survivors) {
    EXPECT_TRUE(allowed(s.code)) << out.output;
    std::printf(" rank %d %s after %.3f s;", r, s.code.c_str(),
                static_cast<double>(s.detected_at - out.killed_at) / 1e9);
  }
  std::printf(" (%zu survivors reported before mpirun ended the job)\n", out.survivors.size());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MPIRUN PEER_FAILURE_WORKER\n", argv[0]);
    return 2;
  }
  g_mpirun = argv[1];
  g_worker = argv[2];
  return RUN_ALL_TESTS();
}

// One rank of the peer-failure test, started by scripts/launch: a long loop of dense allreduces
// over UCX. The rank named by FRUGAL_TEST_VICTIM kills itself with SIGKILL (or stops itself with
// SIGSTOP) after
// FRUGAL_TEST_KILL_AFTER_MS from a second thread, i.e. in the middle of a collective. Every other
// rank must leave the loop with frugal::Error (PeerFailure or Timeout); it prints one line the
// driver parses (times are CLOCK_MONOTONIC nanoseconds, shared by all processes of the host):
//   VICTIM rank=<r> killed_at=<ns>
//   SURVIVOR rank=<r> code=<peer failure|timeout|...> detected_at=<ns> iterations=<n> what=<msg>
//   FINISHED rank=<r> iterations=<n>          (no error: the driver fails the test)
// FRUGAL_TEST_VICTIM_CMD: a shell command the victim runs just before the signal (the
// multi-namespace test takes its link down with it, so that it dies without closing its TCP
// connections, as a crashed host would).
// FRUGAL_TEST_PRINT_ENDPOINTS=1 adds, before the loop, what ucx_endpoint_info() says of every
// endpoint to another rank, one line each:
//   ENDPOINT rank=<r> peer=<p> <its "# frugal: err_mode=..." line> lanes: <transport/device>...
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "frugal/ucx.hpp"

namespace {

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             frugal::Clock::now().time_since_epoch())
      .count();
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

}  // namespace

int main() {
  const int victim = env_int("FRUGAL_TEST_VICTIM", 1);
  const int kill_after_ms = env_int("FRUGAL_TEST_KILL_AFTER_MS", 1000);
  // FRUGAL_TEST_STOP=1: SIGSTOP instead of SIGKILL, a stalled peer rather than a dead one.
  const bool stop = env_int("FRUGAL_TEST_STOP", 0) != 0;
  const auto comm = frugal::make_ucx_communicator_from_env();
  const int rank = comm->rank();
  if (env_int("FRUGAL_TEST_PRINT_ENDPOINTS", 0) != 0) {
    const std::regex lane(R"(lane\[\d+\]:\s+\d+:(\S+))");
    for (int peer = 0; peer < comm->size(); ++peer) {
      if (peer == rank) continue;
      const std::string info = frugal::ucx_endpoint_info(comm->transport(), peer);
      std::string lanes;
      for (std::sregex_iterator it(info.begin(), info.end(), lane), end; it != end; ++it) {
        lanes.append(" ").append((*it)[1].str());
      }
      const std::string first = info.substr(0, info.find('\n'));
      std::printf("ENDPOINT rank=%d peer=%d %s lanes:%s\n", rank, peer, first.c_str(),
                  lanes.c_str());
    }
    std::fflush(stdout);
  }
  if (rank == victim) {
    const char* cmd = std::getenv("FRUGAL_TEST_VICTIM_CMD");
    const std::string victim_cmd = cmd != nullptr ? cmd : "";
    std::thread([kill_after_ms, rank, stop, victim_cmd] {
      std::this_thread::sleep_for(std::chrono::milliseconds(kill_after_ms));
      if (!victim_cmd.empty() && std::system(victim_cmd.c_str()) != 0) {
        std::fprintf(stderr, "FRUGAL_TEST_VICTIM_CMD failed: %s\n", victim_cmd.c_str());
      }
      std::printf("VICTIM rank=%d killed_at=%lld\n", rank, now_ns());
      std::fflush(stdout);
      std::raise(stop ? SIGSTOP : SIGKILL);
    }).detach();
  }
  // 4 MiB: a few milliseconds per allreduce, so the kill lands inside one.
  std::vector<float> data(1 << 20, 1.0f);
  long iterations = 0;
  const long max_iterations = 1'000'000;
  try {
    for (; iterations < max_iterations; ++iterations) {
      std::fill(data.begin(), data.end(), 1.0f);
      frugal::allreduce(*comm, std::span<float>(data));
    }
  } catch (const frugal::Error& e) {
    const long long detected = now_ns();
    std::printf("SURVIVOR rank=%d code=%s detected_at=%lld iterations=%ld what=%s\n", rank,
                std::string(frugal::to_string(e.code())).c_str(), detected, iterations, e.what());
    std::fflush(stdout);
    return 3;
  }
  std::printf("FINISHED rank=%d iterations=%ld\n", rank, iterations);
  return 0;
}

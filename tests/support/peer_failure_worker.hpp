#pragma once

// What the peer-failure workers (tests/mpi and tests/ucx, one process per rank) share: the victim
// that signals itself mid-collective and the survivors' allreduce loop, with the lines their
// drivers parse (times are CLOCK_MONOTONIC nanoseconds, shared by all processes of the host):
//   VICTIM rank=<r> killed_at=<ns>
//   SURVIVOR rank=<r> code=<peer failure|timeout|...> detected_at=<ns> iterations=<n> what=<msg>
//   FINISHED rank=<r> iterations=<n>          (no error: the driver fails the test)
// Environment: FRUGAL_TEST_VICTIM (rank, default 1), FRUGAL_TEST_KILL_AFTER_MS (default 1000),
// FRUGAL_TEST_STOP (1: SIGSTOP, a stalled peer; 0: SIGKILL, a dead one; the default is the
// worker's), FRUGAL_TEST_VICTIM_CMD (a shell command the victim runs just before the signal, e.g.
// taking its link down so that it dies without closing its TCP connections, as a crashed host).

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"

namespace frugal::test {

inline long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// If `rank` is the victim, starts the thread that signals this process (see above).
inline void arm_victim(int rank, bool stop_by_default) {
  if (rank != env_int("FRUGAL_TEST_VICTIM", 1)) return;
  const int kill_after_ms = env_int("FRUGAL_TEST_KILL_AFTER_MS", 1000);
  const bool stop = env_int("FRUGAL_TEST_STOP", stop_by_default ? 1 : 0) != 0;
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

// Allreduces 4 MiB (a few milliseconds each, so the signal lands inside one) until an error,
// prints SURVIVOR (then sleeps `linger_ms`) and returns 3; FINISHED and 0 if none came.
inline int allreduce_until_failure(Communicator& comm, int linger_ms = 0) {
  std::vector<float> data(1 << 20, 1.0f);
  long iterations = 0;
  const long max_iterations = 1'000'000;
  try {
    for (; iterations < max_iterations; ++iterations) {
      std::fill(data.begin(), data.end(), 1.0f);
      allreduce(comm, std::span<float>(data));
    }
  } catch (const Error& e) {
    const long long detected = now_ns();
    std::printf("SURVIVOR rank=%d code=%s detected_at=%lld iterations=%ld what=%s\n", comm.rank(),
                std::string(to_string(e.code())).c_str(), detected, iterations, e.what());
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(linger_ms));
    return 3;
  }
  std::printf("FINISHED rank=%d iterations=%ld\n", comm.rank(), iterations);
  return 0;
}

}  // namespace frugal::test

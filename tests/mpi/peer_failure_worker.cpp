// One rank of the MPI-transport peer-failure test (mpirun): a long loop of dense allreduces over
// frugal's MPI transport. The rank named by FRUGAL_TEST_VICTIM stops itself with SIGSTOP (or
// kills itself with SIGKILL when FRUGAL_TEST_STOP=0) after FRUGAL_TEST_KILL_AFTER_MS from a
// second thread, i.e. in the middle of a collective. Every other rank must leave the loop with
// frugal::Error (PeerFailure or Timeout); it prints one line the driver parses (CLOCK_MONOTONIC
// nanoseconds, shared by all processes of the host):
//   VICTIM rank=<r> killed_at=<ns>
//   SURVIVOR rank=<r> code=<peer failure|timeout|...> detected_at=<ns> iterations=<n> what=<msg>
//   FINISHED rank=<r> iterations=<n>          (no error: the driver fails the test)
// A survivor then lingers FRUGAL_TEST_LINGER_MS (so that mpirun, which aborts the whole job when
// the first process exits non-zero, does not kill the others before their own deadlines) and
// returns 3 from main, as a program would: frugal initialised MPI, and its exit handler skips
// MPI_Finalize after a failure (which would wait for the stopped victim), so the process ends
// and mpirun ends the job, the stopped victim included.
#include <mpi.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"

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
  const bool stop = env_int("FRUGAL_TEST_STOP", 1) != 0;
  const auto comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
  const int rank = comm->rank();
  if (rank == victim) {
    std::thread([kill_after_ms, rank, stop] {
      std::this_thread::sleep_for(std::chrono::milliseconds(kill_after_ms));
      std::printf("VICTIM rank=%d killed_at=%lld\n", rank, now_ns());
      std::fflush(stdout);
      std::raise(stop ? SIGSTOP : SIGKILL);
    }).detach();
  }
  // 4 MiB: a few milliseconds per allreduce, so the signal lands inside one.
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
    std::this_thread::sleep_for(std::chrono::milliseconds(env_int("FRUGAL_TEST_LINGER_MS", 0)));
    return 3;
  }
  std::printf("FINISHED rank=%d iterations=%ld\n", rank, iterations);
  return 0;
}

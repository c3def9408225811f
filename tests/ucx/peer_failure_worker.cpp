// One rank of the UCX peer-failure tests, started by scripts/launch or bench/cluster/run --exec:
// a long loop of dense allreduces over UCX. The rank named by FRUGAL_TEST_VICTIM kills itself
// with SIGKILL (or stops itself with SIGSTOP when FRUGAL_TEST_STOP=1) in the middle of a
// collective, after running FRUGAL_TEST_VICTIM_CMD if set; every other rank must leave the loop
// with frugal::Error (PeerFailure or Timeout). The lines the drivers parse and the environment
// are in tests/support/peer_failure_worker.hpp.
// FRUGAL_TEST_PRINT_ENDPOINTS=1 adds, before the loop, what ucx_endpoint_info() says of every
// endpoint to another rank, one line each:
//   ENDPOINT rank=<r> peer=<p> <its "# frugal: err_mode=..." line> lanes: <transport/device>...
#include "peer_failure_worker.hpp"

#include <cstdio>
#include <regex>
#include <string>

#include "frugal/ucx.hpp"

int main() {
  const auto comm = frugal::make_ucx_communicator_from_env();
  const int rank = comm->rank();
  if (frugal::test::env_int("FRUGAL_TEST_PRINT_ENDPOINTS", 0) != 0) {
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
  frugal::test::arm_victim(rank, /*stop_by_default=*/false);
  return frugal::test::allreduce_until_failure(*comm);
}

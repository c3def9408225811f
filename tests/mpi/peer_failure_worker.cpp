// One rank of the MPI-transport peer-failure test (mpirun): a long loop of dense allreduces over
// frugal's MPI transport. The rank named by FRUGAL_TEST_VICTIM stops itself with SIGSTOP (or
// kills itself with SIGKILL when FRUGAL_TEST_STOP=0) in the middle of a collective; every other
// rank must leave the loop with frugal::Error (PeerFailure or Timeout). The lines the driver
// parses and the environment are in tests/support/peer_failure_worker.hpp.
// A survivor then lingers FRUGAL_TEST_LINGER_MS (so that mpirun, which aborts the whole job when
// the first process exits non-zero, does not kill the others before their own deadlines) and
// returns 3 from main, as a program would: frugal initialised MPI, and its exit handler skips
// MPI_Finalize after a failure (which would wait for the stopped victim), so the process ends
// and mpirun ends the job, the stopped victim included.
#include "peer_failure_worker.hpp"

#include <mpi.h>

#include "frugal/mpi.hpp"

int main() {
  const auto comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
  frugal::test::arm_victim(comm->rank(), /*stop_by_default=*/true);
  return frugal::test::allreduce_until_failure(*comm,
                                               frugal::test::env_int("FRUGAL_TEST_LINGER_MS", 0));
}

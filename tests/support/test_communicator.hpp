#pragma once

#include <memory>

#include "frugal/communicator.hpp"

namespace frugal::testing {

// The communicator the multi-process tests run on. The transport comes from
// FRUGAL_TEST_TRANSPORT:
//   "mpi" (default)  Open MPI point-to-point over MPI_COMM_WORLD;
//   "ucx"            UCX for data, MPI_COMM_WORLD only to exchange worker addresses;
//   "ucx-env"        UCX with the TCP-store bootstrap from FRUGAL_RANK / FRUGAL_WORLD_SIZE /
//                    FRUGAL_ADDR (scripts/launch sets them); touches no MPI, so it suits test
//                    programs started without mpirun.
// Unknown names (and ucx* when UCX was not built) throw InvalidArgument, so a test registered for
// a transport that is not built fails loudly instead of testing MPI twice.
std::unique_ptr<Communicator> make_test_communicator(CommunicatorOptions options = {});

// One make_test_communicator() per process, created on first use, for the tests and for a
// main() that must agree on the result with the other ranks.
Communicator& shared_test_communicator();

}  // namespace frugal::testing

#pragma once

#include <memory>

#include "frugal/communicator.hpp"

namespace frugal::testing {

// The communicator the multi-process tests run on, over MPI_COMM_WORLD. The transport comes from
// FRUGAL_TEST_TRANSPORT: "mpi" (default). Unknown names throw InvalidArgument, so a test
// registered for a transport that is not built fails loudly instead of testing MPI twice.
std::unique_ptr<Communicator> make_test_communicator(CommunicatorOptions options = {});

}  // namespace frugal::testing

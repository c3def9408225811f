#include "test_communicator.hpp"

#include <cstdlib>
#include <string>

#include "frugal/error.hpp"
#include "frugal/mpi.hpp"

namespace frugal::testing {

std::unique_ptr<Communicator> make_test_communicator(CommunicatorOptions options) {
  const char* env = std::getenv("FRUGAL_TEST_TRANSPORT");
  const std::string transport = env != nullptr && *env != '\0' ? env : "mpi";
  if (transport == "mpi") return make_mpi_communicator(MPI_COMM_WORLD, options);
  throw Error(ErrorCode::InvalidArgument,
              "FRUGAL_TEST_TRANSPORT: unknown transport '" + transport + "' (known: mpi)");
}

}  // namespace frugal::testing

#include "test_communicator.hpp"

#include <cstdlib>
#include <string>

#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif

namespace frugal::testing {

namespace {

#ifdef FRUGAL_HAVE_UCX
constexpr const char* kKnown = "mpi, ucx, ucx-env";
#else
constexpr const char* kKnown = "mpi; ucx was not built";
#endif

}  // namespace

std::unique_ptr<Communicator> make_test_communicator(CommunicatorOptions options) {
  const char* env = std::getenv("FRUGAL_TEST_TRANSPORT");
  const std::string transport = env != nullptr && *env != '\0' ? env : "mpi";
  if (transport == "mpi") return make_mpi_communicator(MPI_COMM_WORLD, options);
#ifdef FRUGAL_HAVE_UCX
  if (transport == "ucx") return make_ucx_communicator(MPI_COMM_WORLD, options);
  if (transport == "ucx-env") return make_ucx_communicator_from_env(options);
#endif
  throw Error(ErrorCode::InvalidArgument, "FRUGAL_TEST_TRANSPORT: unknown transport '" + transport +
                                              "' (known: " + kKnown + ")");
}

Communicator& shared_test_communicator() {
  static const std::unique_ptr<Communicator> comm = make_test_communicator();
  return *comm;
}

}  // namespace frugal::testing

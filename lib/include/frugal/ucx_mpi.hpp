#pragma once

// UCX for data with MPI only to exchange the worker addresses: needs both frugal_ucx and
// frugal_mpi. Inline, so that neither library depends on the other and only programs that
// include this header link both.

#include <mpi.h>

#include <memory>

#include "frugal/communicator.hpp"
#include "frugal/mpi.hpp"
#include "frugal/ucx.hpp"

namespace frugal {

// Collective over `comm`, which is only used during the call. Errors: those of
// make_mpi_bootstrap and make_ucx_transport.
inline std::unique_ptr<Communicator> make_ucx_communicator(MPI_Comm comm = MPI_COMM_WORLD,
                                                           CommunicatorOptions options = {},
                                                           UcxOptions ucx_options = {}) {
  const std::unique_ptr<Bootstrap> bootstrap = make_mpi_bootstrap(comm);
  return std::make_unique<Communicator>(make_ucx_transport(*bootstrap, ucx_options), options);
}

}  // namespace frugal

#pragma once

// Open MPI as a transport and as a bootstrap: the library frugal_mpi, the only frugal library
// that links MPI (frugal_core, the compression and the collectives do not).

#include <mpi.h>

#include <memory>
#include <string>

#include "frugal/bootstrap.hpp"
#include "frugal/communicator.hpp"
#include "frugal/transport.hpp"

namespace frugal {

// Initialises MPI with MPI_THREAD_MULTIPLE requested unless the caller already did. If frugal
// initialised MPI, it also finalises it at process exit. Throws Error(Transport) if MPI was
// already finalised.
void ensure_mpi_initialized();

// Open MPI point-to-point on a duplicate of `comm` (so frugal's traffic never matches the
// caller's) with MPI_ERRORS_RETURN: every MPI failure becomes a frugal::Error. `comm` may be
// freed by the caller afterwards. Collective over `comm` (MPI_Comm_dup).
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm = MPI_COMM_WORLD);

// A communicator over make_mpi_transport(comm).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD,
                                                    CommunicatorOptions options = {});

// A bootstrap whose allgather is MPI_Allgather(v) over `comm`, which must stay valid while the
// bootstrap is used. Initialises MPI like ensure_mpi_initialized. Errors: InvalidArgument for
// more than INT_MAX bytes in all; MPI failures as mpi_error converts them.
std::unique_ptr<Bootstrap> make_mpi_bootstrap(MPI_Comm comm = MPI_COMM_WORLD);

// Converts an MPI return code into a frugal::Error whose message starts with `context`.
// Error classes: truncation -> Mismatch; bad rank/tag/count/buffer -> InvalidArgument; process
// failure (where the MPI reports it) -> PeerFailure; anything else -> Transport.
Error mpi_error(int code, const std::string& context);

}  // namespace frugal

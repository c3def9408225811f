#pragma once

#include <mpi.h>

#include <memory>
#include <string>

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

// Converts an MPI return code into a frugal::Error whose message starts with `context`.
// Error classes: truncation -> Mismatch; bad rank/tag/count/buffer -> InvalidArgument; process
// failure (where the MPI reports it) -> PeerFailure; anything else -> Transport.
Error mpi_error(int code, const std::string& context);

}  // namespace frugal

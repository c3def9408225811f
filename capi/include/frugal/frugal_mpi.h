/* frugal C API: creating a communicator from an MPI communicator. Separate from frugal.h so that
 * code without MPI headers can use the rest of the API. */
#ifndef FRUGAL_FRUGAL_MPI_H
#define FRUGAL_FRUGAL_MPI_H

#include <mpi.h>

#include "frugal/frugal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A communicator over the ranks of `comm`, which frugal duplicates (so frugal's traffic never
 * matches the caller's; `comm` may be freed afterwards). Initialises MPI if the caller did not
 * (see frugal_comm_create_mpi_world). Collective over `comm`. FRUGAL_ERR_UNSUPPORTED for
 * FRUGAL_TRANSPORT_UCX when built without UCX. */
FRUGAL_API frugal_status frugal_comm_create_mpi(MPI_Comm comm, frugal_transport transport,
                                                frugal_comm** out);

#ifdef __cplusplus
}
#endif

#endif /* FRUGAL_FRUGAL_MPI_H */

// The library initialises (and finalises) MPI itself when the caller has not: no MPI_Init here.
#include <mpi.h>

#include <cstdio>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/mpi.hpp"

int main() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized != 0) {
    std::fprintf(stderr, "MPI unexpectedly initialised before frugal\n");
    return 1;
  }
  auto comm = frugal::make_mpi_communicator();
  std::vector<float> data(100'000, static_cast<float>(comm->rank() + 1));
  frugal::allreduce(*comm, std::span<float>(data));
  const float expected = static_cast<float>(comm->size() * (comm->size() + 1) / 2);
  for (float x : data) {
    if (x != expected) {
      std::fprintf(stderr, "rank %d: got %g, expected %g\n", comm->rank(), x, expected);
      return 1;
    }
  }
  MPI_Initialized(&initialized);
  if (initialized == 0) return 1;
  std::printf("rank %d of %d: ok (MPI initialised by frugal)\n", comm->rank(), comm->size());
  return 0;  // MPI_Finalize runs from frugal's atexit handler
}

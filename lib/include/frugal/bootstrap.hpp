#pragma once

// How the ranks of a group find each other before a transport exists: each rank contributes a
// small blob (a UCX worker address) and receives everyone's. Implementations:
//   - under mpirun, MPI_Allgather: make_mpi_bootstrap (frugal/mpi.hpp, library frugal_mpi);
//   - without MPI, a TCP rendezvous store served by rank 0: make_tcp_bootstrap
//     (frugal/tcp_store.hpp, library frugal_ucx).
//
// Thread-safety: a Bootstrap is used by one thread at a time. Errors: frugal::Error, as each
// implementation documents.

#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

namespace frugal {

class Bootstrap {
 public:
  virtual ~Bootstrap() = default;

  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  virtual std::string_view name() const noexcept = 0;

  // Collective: every rank contributes `mine` and gets all contributions, in rank order. The
  // span is only read during the call.
  virtual std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) = 0;
};

}  // namespace frugal

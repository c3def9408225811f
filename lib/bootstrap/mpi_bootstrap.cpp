// The bootstrap under mpirun: blobs exchanged with MPI_Allgather (sizes) and MPI_Allgatherv.

#include <climits>
#include <numeric>
#include <string>

#include "frugal/bootstrap.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"

namespace frugal {

namespace {

class MpiBootstrap final : public Bootstrap {
 public:
  explicit MpiBootstrap(MPI_Comm comm) : comm_(comm) {
    ensure_mpi_initialized();
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "mpi"; }

  std::vector<std::vector<std::byte>> allgather(std::span<const std::byte> mine) override {
    require(mine.size() <= static_cast<std::size_t>(INT_MAX), "mine",
            "at most INT_MAX bytes through MPI_Allgatherv");
    const int my_bytes = static_cast<int>(mine.size());
    std::vector<int> counts(static_cast<std::size_t>(size_));
    check(MPI_Allgather(&my_bytes, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_), "MPI_Allgather");
    std::vector<int> offsets(counts.size(), 0);
    std::size_t total = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      require(total + static_cast<std::size_t>(counts[i]) <= static_cast<std::size_t>(INT_MAX),
              "mine", "the sum over ranks exceeds INT_MAX bytes");
      offsets[i] = static_cast<int>(total);
      total += static_cast<std::size_t>(counts[i]);
    }
    std::vector<std::byte> gathered(total);
    check(MPI_Allgatherv(mine.data(), my_bytes, MPI_BYTE, gathered.data(), counts.data(),
                         offsets.data(), MPI_BYTE, comm_),
          "MPI_Allgatherv");
    std::vector<std::vector<std::byte>> all(counts.size());
    for (std::size_t i = 0; i < counts.size(); ++i) {
      const auto first = gathered.begin() + offsets[i];
      all[i].assign(first, first + counts[i]);
    }
    return all;
  }

 private:
  void check(int rc, const char* call) const {
    if (rc != MPI_SUCCESS) {
      throw mpi_error(rc, "bootstrap (rank " + std::to_string(rank_) + " of " +
                              std::to_string(size_) + "): " + call);
    }
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Bootstrap> make_mpi_bootstrap(MPI_Comm comm) {
  return std::make_unique<MpiBootstrap>(comm);
}

}  // namespace frugal

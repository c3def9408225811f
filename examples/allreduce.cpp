// frugal's C++ API over MPI: a dense sum (exact), then a compressed average (QSGD, 4 bits).
// Run: mpirun -np 2 example-allreduce. Exits 1 if either result is off.
#include "frugal/collectives/allreduce.hpp"

#include <cmath>
#include <cstdio>
#include <numeric>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/mpi.hpp"

int main() {
  const auto comm = frugal::make_mpi_communicator();  // initialises (and finalises) MPI
  const int rank = comm->rank(), size = comm->size();

  std::vector<float> dense(1000, static_cast<float>(rank + 1));
  frugal::allreduce(*comm, std::span<float>(dense));  // every element: 1 + 2 + ... + size
  const bool exact = dense == std::vector<float>(1000, size * (size + 1) / 2.0f);

  std::vector<float> grad(1 << 20, 0.5f * static_cast<float>(rank + 1));
  frugal::AllreduceState state;  // error feedback: what compression dropped, added next time
  frugal::AllreduceOptions options;
  options.op = frugal::ReduceOp::Average;
  options.compression.method = frugal::compression::Method::Qsgd;
  options.state = &state;
  frugal::allreduce(*comm, std::span<float>(grad), options);
  const double mean = std::accumulate(grad.begin(), grad.end(), 0.0) / grad.size();
  const double expected = 0.25 * (size + 1);  // QSGD is unbiased: the mean survives compression

  std::printf("rank %d of %d: dense sum %g (%s), compressed mean %.4f (expected %.4f)\n", rank,
              size, dense[0], exact ? "exact" : "WRONG", mean, expected);
  return exact && std::abs(mean - expected) < 0.01 * expected ? 0 : 1;
}

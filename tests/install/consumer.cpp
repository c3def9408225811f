// An out-of-tree C++ program built against an installed frugal (pkg-config or CMake) by
// install_test.sh: the C++ API (dense and compressed allreduce, async, buckets, UCX when built)
// and the C API from C++. Run under mpirun; exits 0 and prints "consumer-cpp OK rank R of P"
// when every check holds on this rank.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/frugal.h"
#include "frugal/mpi.hpp"
#if FRUGAL_BUILT_WITH_UCX
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif

namespace {

int failures = 0;

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "consumer-cpp: check failed: %s\n", what);
    ++failures;
  }
}

// Dense sum of integers (exact) and a compressed allreduce through the C API on the same
// communicator kind must agree with the C++ API.
void exercise(frugal::Communicator& comm) {
  const int p = comm.size();
  std::vector<float> v(5000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((comm.rank() + 1) * (i % 9));
  frugal::allreduce(comm, std::span<float>(v));
  bool exact = true;
  for (std::size_t i = 0; i < v.size(); ++i) {
    exact = exact && v[i] == static_cast<float>(p * (p + 1) / 2 * static_cast<int>(i % 9));
  }
  check(exact, "dense sum is exact");

  frugal::AllreduceState state;
  frugal::AllreduceOptions options;
  options.compression.method = frugal::compression::Method::Qsgd;
  options.state = &state;
  std::vector<float> g(4096);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = std::sin(static_cast<float>(i + comm.rank()));
  auto handle = frugal::allreduce_async(comm, std::span<float>(g), options);
  handle.wait();
  check(state.steps() == 1, "async compressed allreduce ran once");
  bool finite = true;
  for (float x : g) finite = finite && std::isfinite(x);
  check(finite, "compressed result is finite");

  frugal::GradientBuckets buckets(comm);
  buckets.add("w", 100);
  buckets.add("b", 10);
  std::vector<float> w(100, 1.0f), b(10, 2.0f);
  buckets.mark_ready("b", std::span<float>(b));
  buckets.mark_ready("w", std::span<float>(w));
  buckets.finish();
  check(w[0] == static_cast<float>(p) && b[9] == 2.0f * static_cast<float>(p), "bucket sums");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--help") == 0) {
    std::printf("usage: %s   (under mpirun)\n", argv[0]);
    return 0;
  }
  int rank = -1, size = 0;
  try {
    auto comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
    rank = comm->rank();
    size = comm->size();
    exercise(*comm);
#if FRUGAL_BUILT_WITH_UCX
    auto ucx = frugal::make_ucx_communicator(MPI_COMM_WORLD);
    exercise(*ucx);
#endif
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "consumer-cpp: %s\n", e.what());
    return 1;
  }
  // The C API from C++.
  check(frugal_version() == FRUGAL_VERSION, "header and library versions agree");
  frugal_comm* c = nullptr;
  check(frugal_comm_create_mpi_world(FRUGAL_TRANSPORT_MPI, &c) == FRUGAL_OK, "C communicator");
  float x[3] = {1, 2, 3};
  check(frugal_allreduce(c, x, 3, nullptr) == FRUGAL_OK, "C allreduce");
  check(x[2] == 3.0f * static_cast<float>(size), "C allreduce sum");
  frugal_comm_destroy(c);
  if (failures == 0) std::printf("consumer-cpp OK rank %d of %d\n", rank, size);
  return failures == 0 ? 0 : 1;
}

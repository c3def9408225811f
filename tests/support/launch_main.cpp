// main() for test programs started by scripts/launch (no MPI): every rank runs every test; the
// ranks agree over frugal itself whether any failed, and all exit non-zero if one did.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "frugal/collectives/allreduce.hpp"
#include "test_communicator.hpp"

int main(int argc, char** argv) {
  const char* rank = std::getenv("FRUGAL_RANK");
  if (rank != nullptr && std::string(rank) != "0") GTEST_FLAG_SET(brief, true);
  ::testing::InitGoogleTest(&argc, argv);
  std::int32_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  try {
    frugal::allreduce(frugal::testing::shared_test_communicator(),
                      std::span<std::int32_t>(&failed, 1));
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "rank %s: could not agree on the result: %s\n", rank ? rank : "?",
                 e.what());
    return 1;
  }
  return failed != 0 ? 1 : 0;
}

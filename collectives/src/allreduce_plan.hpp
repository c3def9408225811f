#pragma once

#include <cstddef>
#include <memory>

#include "agreement.hpp"
#include "frugal/collectives/allreduce.hpp"

namespace frugal::detail {

// What allreduce() settles before it sends anything, dense and compressed alike: the checked
// options, the algorithm that runs and the terms every rank must agree on.
struct AllreducePlan {
  bool compressed = false;                                  // a compression method other than None
  std::unique_ptr<compression::Compressor> compressor;      // compressed: from options.compression
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // resolved: never Auto
  AgreementTerms terms;
  int divisor = 1;  // Average: the number of ranks
};

// Checks `options` for a buffer of `bytes` bytes of `dtype` on `comm` and resolves Auto. Throws
// InvalidArgument naming the parameter (data, op, dtype, a compression parameter, algorithm,
// state, non_finite, in this order) before anything is sent.
AllreducePlan plan_allreduce(const Communicator& comm, std::size_t bytes, DType dtype,
                             const AllreduceOptions& options);

}  // namespace frugal::detail

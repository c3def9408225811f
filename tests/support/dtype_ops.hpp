#pragma once
// The element type / reduce op combinations the exact allreduce tests check, as a gtest type
// list: TYPED_TEST_SUITE(Suite, testing::DtypeOps, testing::DtypeOpNames) runs one body per
// combination, named float32_sum, float64_average, ...
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "frugal/dtype.hpp"

namespace frugal::testing {

template <typename T, ReduceOp Op>
struct DtypeOp {
  using Type = T;
  static constexpr ReduceOp op = Op;
};

// int32 has no average (the library refuses it).
using DtypeOps =
    ::testing::Types<DtypeOp<float, ReduceOp::Sum>, DtypeOp<float, ReduceOp::Average>,
                     DtypeOp<double, ReduceOp::Sum>, DtypeOp<double, ReduceOp::Average>,
                     DtypeOp<std::int32_t, ReduceOp::Sum>>;

struct DtypeOpNames {
  template <typename D>
  static std::string GetName(int) {
    return std::string(to_string(dtype_of<typename D::Type>)) + "_" + std::string(to_string(D::op));
  }
};

}  // namespace frugal::testing

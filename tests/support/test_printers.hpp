#pragma once
// How gtest prints frugal's enums when they are test parameters ("GetParam() = (ring, sum)"
// instead of byte dumps). gtest finds PrintTo by argument-dependent lookup, so these live in
// namespace frugal beside the enums.
#include <ostream>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/dtype.hpp"

namespace frugal {

inline void PrintTo(ReduceOp op, std::ostream* os) {
  *os << to_string(op);
}

inline void PrintTo(AllreduceAlgorithm algorithm, std::ostream* os) {
  *os << to_string(algorithm);
}

}  // namespace frugal

#pragma once
// How gtest prints frugal's enums when they are test parameters ("GetParam() = (ring, sum)"
// instead of byte dumps). gtest finds PrintTo by argument-dependent lookup, so these live in
// namespace frugal beside the enums.
#include <cctype>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/dtype.hpp"

namespace frugal {

inline void PrintTo(ReduceOp op, std::ostream* os) {
  *os << to_string(op);
}

inline void PrintTo(AllreduceAlgorithm algorithm, std::ostream* os) {
  *os << to_string(algorithm);
}

inline void PrintTo(NonFiniteAction action, std::ostream* os) {
  *os << to_string(action);
}

namespace compression {

inline void PrintTo(Method method, std::ostream* os) {
  *os << to_string(method);
}

}  // namespace compression

namespace testing {

// Part of a generated test name (letters, digits and '_' only): every run of other characters
// becomes one '_', so "allreduce-16" is allreduce_16 and "top-k k" is top_k_k.
inline std::string name_part(std::string_view text) {
  std::string out;
  bool gap = false;
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c)) != 0) {
      if (gap && !out.empty()) out += '_';
      out += c;
      gap = false;
    } else {
      gap = true;
    }
  }
  return out;
}

// A density as part of a test name: 0.02 is d0_02.
inline std::string density_name(double density) {
  std::ostringstream os;
  os << density;
  std::string name = "d";
  name += name_part(os.str());
  return name;
}

}  // namespace testing

}  // namespace frugal

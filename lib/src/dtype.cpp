#include "frugal/dtype.hpp"

namespace frugal {

std::string_view to_string(DType t) noexcept {
  switch (t) {
    case DType::Float32:
      return "float32";
    case DType::Float64:
      return "float64";
    case DType::Int32:
      return "int32";
  }
  return "unknown";
}

std::string_view to_string(ReduceOp op) noexcept {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Average:
      return "average";
  }
  return "unknown";
}

}  // namespace frugal

#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "frugal/enum_names.hpp"

namespace frugal {

// Element types the dense collectives reduce. float32 is the product's type; float64 and int32
// exist so tests can check algorithms exactly.
enum class DType : std::uint8_t { Float32 = 1, Float64 = 2, Int32 = 3 };

enum class ReduceOp : std::uint8_t { Sum = 1, Average = 2 };

constexpr std::size_t size_of(DType t) noexcept {
  switch (t) {
    case DType::Float32:
      return 4;
    case DType::Float64:
      return 8;
    case DType::Int32:
      return 4;
  }
  return 0;
}

template <>
struct EnumNames<DType> {
  static constexpr std::array<EnumName<DType>, 3> table{
      {{DType::Float32, "float32"}, {DType::Float64, "float64"}, {DType::Int32, "int32"}}};
};

template <>
struct EnumNames<ReduceOp> {
  static constexpr std::array<EnumName<ReduceOp>, 2> table{
      {{ReduceOp::Sum, "sum"}, {ReduceOp::Average, "average"}}};
};

constexpr std::string_view to_string(DType t) noexcept {
  return enum_name(t);
}
constexpr std::string_view to_string(ReduceOp op) noexcept {
  return enum_name(op);
}

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::Float32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::Float64;
};
template <>
struct DTypeOf<std::int32_t> {
  static constexpr DType value = DType::Int32;
};

template <typename T>
concept Reducible = requires {
  DTypeOf<T>::value;
};

template <Reducible T>
constexpr DType dtype_of = DTypeOf<T>::value;

}  // namespace frugal

#pragma once

#include <cstddef>
#include <span>

#include "frugal/dtype.hpp"

namespace frugal::detail {

// dst[i] += src[i] over whole elements of `dtype`. int32 wraps around like two's complement
// instead of being undefined on overflow.
void reduce_sum(std::span<std::byte> dst, std::span<const std::byte> src, DType dtype) noexcept;

// data[i] /= divisor (floating types only).
void divide(std::span<std::byte> data, DType dtype, int divisor) noexcept;

}  // namespace frugal::detail

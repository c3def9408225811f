#pragma once

#include <cstdint>

namespace frugal::compression {

// Scalar IEEE binary16 conversions, bit-exact with x86 F16C (round to nearest even, NaN quieted
// keeping its top payload bits). The fp16 kernels use F16C when the CPU has it and these
// otherwise; exposed for tests and for code that converts single values.
std::uint16_t float_to_half(float f) noexcept;
float half_to_float(std::uint16_t h) noexcept;

}  // namespace frugal::compression

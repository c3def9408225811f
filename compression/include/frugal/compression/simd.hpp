#pragma once

#include "frugal/enum_names.hpp"

namespace frugal::compression {

// Which instruction set the kernels use. Every level produces bit-identical payloads and
// decodes (the kernels are written lane by lane and only the width changes), so this is a
// speed knob for benchmarks and a cross-check for tests, never a numerics choice.
enum class SimdLevel {
  Scalar,  // portable C++ (compiler-chosen baseline vectors)
  Avx2,    // x86-64 with AVX2 and F16C, chosen at run time
  Avx512,  // AVX2 plus AVX-512 F/BW/DQ/VL: the random draws and top-k candidate compression
           // run 16 lanes wide, the rest as Avx2 with 32 vector registers
};

}  // namespace frugal::compression

namespace frugal {

template <>
struct EnumNames<compression::SimdLevel> {
  using E = compression::SimdLevel;
  static constexpr std::array<EnumName<E>, 3> table{
      {{E::Scalar, "scalar"}, {E::Avx2, "avx2"}, {E::Avx512, "avx512"}}};
};

}  // namespace frugal

namespace frugal::compression {

// The level in use: the best one this CPU supports unless lowered with set_simd_level.
SimdLevel simd_level() noexcept;

// Lowers (or restores) the level for the whole process; a level the CPU lacks is clamped to the
// best supported one (levels are ordered: Scalar < Avx2 < Avx512). Returns the level now in use.
// Not synchronized with concurrent encodes: call it before starting them (tests and benchmarks do).
SimdLevel set_simd_level(SimdLevel level) noexcept;

// The best level this CPU supports.
SimdLevel best_simd_level() noexcept;

}  // namespace frugal::compression

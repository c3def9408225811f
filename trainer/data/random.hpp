#pragma once

// Counter-based randomness for the data pipeline. Every random decision is a pure function of
// (seed, counter), so an example's augmentation does not depend on which thread or rank
// decodes it, nor on how many examples were decoded before.

#include <cstdint>

namespace frugal::train {

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Combines two values into a seed; not symmetric, so mix_seed(a, b) != mix_seed(b, a).
constexpr std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b) noexcept {
  return splitmix64(a ^ splitmix64(b ^ 0x5851F42D4C957F2Dull));
}

// The SplitMix64 stream from `seed`: value n is splitmix64(seed + n * golden), so it is a
// counter-based generator and cheap to create per example.
class CounterRng {
 public:
  explicit constexpr CounterRng(std::uint64_t seed) noexcept : state_(seed) {}

  constexpr std::uint64_t next() noexcept {
    const std::uint64_t out = splitmix64(state_);
    state_ += 0x9E3779B97F4A7C15ull;
    return out;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double low, double high) noexcept { return low + (high - low) * uniform(); }

  // Uniform integer in [0, bound), bound >= 1; from 53 random bits, so the bias is below
  // bound / 2^53 (negligible for dataset sizes).
  std::uint64_t below(std::uint64_t bound) noexcept {
    const auto value = static_cast<std::uint64_t>(uniform() * static_cast<double>(bound));
    return value < bound ? value : bound - 1;
  }

  bool coin() noexcept { return (next() >> 63) != 0; }

 private:
  std::uint64_t state_;
};

}  // namespace frugal::train

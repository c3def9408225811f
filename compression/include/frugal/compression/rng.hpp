#pragma once

#include <cstdint>

namespace frugal::compression {

// The splitmix64 finalizer (Steele, Lea & Flood 2014): a bijection on 64 bits with full
// avalanche, so hashing consecutive counters gives independent-looking outputs.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z ^= z >> 30;
  z *= 0xbf58476d1ce4e5b9ULL;
  z ^= z >> 27;
  z *= 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z;
}

// A 32-bit mixer (C. Wellons' "lowbias32", from his hash-prospector search): a bijection with
// low avalanche bias, cheap in 8-lane SIMD because it only needs 32-bit multiplies.
constexpr std::uint32_t mix32(std::uint32_t x) noexcept {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  x ^= x >> 15;
  return x;
}

// The seed of stream `stream` of a run seeded with `seed`: buffers that are encoded at the same
// (rank, step) and would otherwise draw the same number for their element i (every bucket of a
// step) each get their own stream from one user seed, reproducibly.
constexpr std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream) noexcept {
  return mix64(seed ^ mix64(stream + 0xa54ff53a5f1d36f1ULL));
}

// Counter-based random numbers for the stochastic quantizers (ternary, QSGD, bf16 with
// stochastic rounding).
//
// The key hashes (seed, rank, step) with splitmix64. Two streams are indexed by a position p:
//   word(p)   = mix64(key + (p + 1) * kGamma), 64 bits (splitmix64 as a counter scheme), for
//               scalar use (next, next_double);
//   bits32(p) = two keyed rounds of mix32 over (p mod 2^32, p / 2^32), 32 bits, which is what the
//               kernels draw for each element: it vectorizes with native 32-bit multiplies, where
//               splitmix64's 64-bit products cost several times more on AVX2 and made the
//               stochastic quantizers compute-bound. For stochastic rounding only; not
//               cryptographic.
// Element i of a buffer encoded with an Rng at offset o draws bits32(o + i), whatever else is
// encoded before or around it. That is what makes
// a run reproducible and lets a buffer be encoded in parallel chunks (chunk c gets
// `at(o + start_c)`) with exactly the result of one encode of the whole buffer.
//
// Value type, cheap to copy; not thread-safe to share one object, but copies are independent.
// Compressor::encode draws positions [offset, offset + n) and then advances offset by n, so
// back-to-back encodes with one Rng never reuse randomness.
class Rng {
 public:
  static constexpr std::uint64_t kGamma = 0x9e3779b97f4a7c15ULL;

  constexpr Rng(std::uint64_t seed, std::uint64_t rank, std::uint64_t step,
                std::uint64_t offset = 0) noexcept
      : key_(make_key(seed, rank, step)), offset_(offset) {}

  // The 64 random bits at absolute position `position`.
  constexpr std::uint64_t word(std::uint64_t position) const noexcept {
    return mix64(key_ + (position + 1) * kGamma);
  }

  // The 32 random bits the kernels use for the element at absolute position `position`.
  constexpr std::uint32_t bits32(std::uint64_t position) const noexcept {
    const auto lo = static_cast<std::uint32_t>(position);
    const auto hi = static_cast<std::uint32_t>(position >> 32);
    const std::uint32_t r = mix32(lo ^ key_lo());
    return mix32(r ^ key_hi() ^ (hi * 0x9e3779b9u));
  }
  constexpr std::uint32_t key_lo() const noexcept { return static_cast<std::uint32_t>(key_); }
  constexpr std::uint32_t key_hi() const noexcept { return static_cast<std::uint32_t>(key_ >> 32); }

  // The 64 random bits at the current offset; advances by one.
  constexpr std::uint64_t next() noexcept { return word(offset_++); }

  // A uniform double in [0, 1) with 53 random bits; advances by one.
  constexpr double next_double() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  constexpr std::uint64_t key() const noexcept { return key_; }
  constexpr std::uint64_t offset() const noexcept { return offset_; }
  constexpr void set_offset(std::uint64_t offset) noexcept { offset_ = offset; }
  constexpr void advance(std::uint64_t count) noexcept { offset_ += count; }

  // The same stream positioned at `offset`.
  constexpr Rng at(std::uint64_t offset) const noexcept {
    Rng copy = *this;
    copy.offset_ = offset;
    return copy;
  }

 private:
  // Each coordinate goes through its own mix so that nearby (rank, step) pairs give unrelated
  // keys: with key = seed + rank, streams of neighbouring ranks would overlap shifted by one.
  static constexpr std::uint64_t make_key(std::uint64_t seed, std::uint64_t rank,
                                          std::uint64_t step) noexcept {
    std::uint64_t k = mix64(seed ^ 0x6a09e667f3bcc909ULL);
    k = mix64(k ^ mix64(rank + 0xbb67ae8584caa73bULL));
    k = mix64(k ^ mix64(step + 0x3c6ef372fe94f82bULL));
    return k;
  }

  std::uint64_t key_;
  std::uint64_t offset_;
};

}  // namespace frugal::compression

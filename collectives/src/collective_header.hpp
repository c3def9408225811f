#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "frugal/collectives/allreduce.hpp"

namespace frugal::detail {

// Sent ahead of the payload of every compressed allreduce by every rank to every other rank, so
// that ranks which disagree on what they are doing all find out, and say how, instead of
// decoding each other's bytes as garbage.
struct CollectiveHeader {
  static constexpr std::uint32_t kMagic = 0x48435246;  // "FRCH"
  static constexpr std::uint8_t kVersion = 1;
  static constexpr std::size_t kSize = 48;

  std::uint8_t algorithm = 0;
  std::uint8_t method = 0;
  std::uint8_t variant = 0;    // scaling / value format / norm / stochastic rounding
  std::uint8_t selection = 0;  // top-k: exact or sampled
  std::uint8_t op = 0;
  std::uint8_t dtype = 0;
  std::uint8_t error_feedback = 0;
  std::uint8_t non_finite_action = 0;  // must agree
  // This rank's input: kNaNOrInf, kOutOfRange (a compensated value beyond the compressor's
  // flag-free magnitude). May differ between ranks; OR-ed.
  std::uint8_t non_finite = 0;
  static constexpr std::uint8_t kNaNOrInf = 1, kOutOfRange = 2;
  std::uint32_t bits = 0;
  std::uint32_t bucket = 0;
  std::uint64_t count = 0;
  std::uint64_t k = 0;
  std::uint64_t seed = 0;

  static CollectiveHeader describe(const AllreduceOptions& options, AllreduceAlgorithm algorithm,
                                   std::size_t count, std::size_t k);

  void write(std::span<std::byte> out) const noexcept;
  // Throws Mismatch naming `peer` and the first field that differs from `expected`, or when the
  // bytes are not a collective header at all. Returns the peer's non-finite flags.
  static std::uint8_t check(std::span<const std::byte> received, const CollectiveHeader& expected,
                            int self, int peer);
};

}  // namespace frugal::detail

#pragma once

// FNV-1a, 64-bit: the one hash behind the digests that ranks compare and the checksums that state
// images carry. Its values are stored in checkpoints, so it must never change.

#include <cstddef>
#include <cstdint>

namespace frugal::detail {

class Fnv1a {
 public:
  Fnv1a& add(const void* data, std::size_t size) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) {
      h_ ^= p[i];
      h_ *= 0x100000001b3ULL;
    }
    return *this;
  }
  // A 64-bit word as 8 bytes, least significant first, whatever the host's byte order.
  Fnv1a& add64(std::uint64_t v) noexcept {
    for (int b = 0; b < 8; ++b) {
      h_ ^= (v >> (8 * b)) & 0xff;
      h_ *= 0x100000001b3ULL;
    }
    return *this;
  }
  std::uint64_t value() const noexcept { return h_; }

 private:
  std::uint64_t h_ = 0xcbf29ce484222325ULL;
};

}  // namespace frugal::detail

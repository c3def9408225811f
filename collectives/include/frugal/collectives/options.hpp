#pragma once

#include <chrono>
#include <cstddef>
#include <optional>

namespace frugal {

// Options every collective accepts.
struct CollectiveOptions {
  // Longest any single wait inside the collective may take; unset: the communicator's timeout.
  std::optional<std::chrono::milliseconds> timeout;
  // Large messages move in segments of this many bytes so that reduction, forwarding and
  // transfer overlap; 0 picks the default (kDefaultSegmentBytes).
  std::size_t segment_bytes = 0;
};

inline constexpr std::size_t kDefaultSegmentBytes = std::size_t{1} << 20;

}  // namespace frugal

#pragma once

#include <cstddef>

namespace frugal::patterns {

struct Range {
  std::size_t offset = 0;
  std::size_t count = 0;
  constexpr std::size_t end() const noexcept { return offset + count; }
  friend bool operator==(const Range&, const Range&) = default;
};

// Splits `total` items into `parts` contiguous ranges whose sizes differ by at most one, the
// larger ones first. Every rank computes the same split, so no sizes need exchanging.
constexpr Range chunk_range(std::size_t total, int parts, int index) noexcept {
  const auto p = static_cast<std::size_t>(parts);
  const auto i = static_cast<std::size_t>(index);
  const std::size_t base = total / p;
  const std::size_t extra = total % p;
  const std::size_t offset = i * base + (i < extra ? i : extra);
  return Range{offset, base + (i < extra ? 1 : 0)};
}

// The range of chunks [first, last) taken together.
constexpr Range chunk_span(std::size_t total, int parts, int first, int last) noexcept {
  const Range a = chunk_range(total, parts, first);
  const Range b = chunk_range(total, parts, last - 1);
  return Range{a.offset, b.end() - a.offset};
}

// Number of segments of at most `segment` items that cover `count` items.
constexpr std::size_t segment_count(std::size_t count, std::size_t segment) noexcept {
  return segment == 0 ? 0 : (count + segment - 1) / segment;
}

// Segment `j` of a range cut into pieces of at most `segment` items.
constexpr Range segment_range(Range range, std::size_t segment, std::size_t j) noexcept {
  const std::size_t start = j * segment;
  const std::size_t count = range.count - start < segment ? range.count - start : segment;
  return Range{range.offset + start, count};
}

}  // namespace frugal::patterns

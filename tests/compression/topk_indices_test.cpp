// Top-k index coding (topk_indices.hpp): round trips at every density, the per-chunk choice of
// delta or bitmap, the size bound, and every kind of corrupt stream refused.
#include "frugal/compression/topk_indices.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "frugal/compression/compressor.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/error.hpp"

namespace frugal::compression {
namespace {

constexpr std::size_t kChunk = kTopKIndexChunk;

std::vector<std::uint32_t> random_indices(std::size_t n, double density, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution pick(density);
  std::vector<std::uint32_t> out;
  for (std::size_t i = 0; i < n; ++i) {
    if (pick(gen)) out.push_back(static_cast<std::uint32_t>(i));
  }
  return out;
}

std::vector<std::byte> code(const std::vector<std::uint32_t>& idx, std::size_t n) {
  std::vector<std::byte> out(topk_index_bytes(idx, n));
  EXPECT_EQ(write_topk_indices(idx, n, out.data()), out.size());
  return out;
}

// The error reading `bytes` throws, nullopt when it reads them.
std::optional<ErrorCode> read_error(const std::vector<std::byte>& bytes, std::size_t n,
                                    std::size_t k) {
  std::vector<std::uint32_t> out;
  try {
    read_topk_indices(bytes, n, k, out);
  } catch (const Error& e) {
    return e.code();
  }
  return std::nullopt;
}

TEST(TopKIndices, RoundTripAtEveryDensityAndWithinTheBound) {
  for (const std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{9}, kChunk - 1, kChunk,
                              kChunk + 1, 3 * kChunk + 77}) {
    for (const double density : {0.0, 0.001, 0.01, 0.1, 0.2, 0.5, 1.0}) {
      const auto idx = random_indices(n, density, static_cast<std::uint32_t>(n * 7 + 1));
      const auto bytes = code(idx, n);
      EXPECT_LE(bytes.size(), max_topk_index_bytes(n, idx.size())) << n << " " << density;
      std::vector<std::uint32_t> back;
      read_topk_indices(bytes, n, idx.size(), back);
      EXPECT_EQ(back, idx) << n << " " << density;
    }
  }
}

TEST(TopKIndices, SparseChunksAreDeltasDenseOnesBitmaps) {
  const std::size_t n = 3 * kChunk;
  std::vector<std::uint32_t> idx;
  // Chunk 0: two indices (delta: count, offset 5, gap 100 - 5 - 1); chunk 1 empty; chunk 2
  // every other element (bitmap).
  idx.push_back(5);
  idx.push_back(100);
  for (std::size_t i = 2 * kChunk; i < n; i += 2) idx.push_back(static_cast<std::uint32_t>(i));
  const auto bytes = code(idx, n);
  ASSERT_EQ(bytes.size(), 1 + 3 + 1 + 1 + kChunk / 8);
  EXPECT_EQ(bytes[0], std::byte{1});  // Delta
  EXPECT_EQ(bytes[1], std::byte{2});  // count
  EXPECT_EQ(bytes[2], std::byte{5});
  EXPECT_EQ(bytes[3], std::byte{94});
  EXPECT_EQ(bytes[4], std::byte{0});  // Empty
  EXPECT_EQ(bytes[5], std::byte{2});  // Bitmap
  EXPECT_EQ(bytes[6], std::byte{0x55});
  // A gap of 200 takes two varint bytes (LEB128: low 7 bits first, continuation bit set).
  const auto two = code({0, 200}, 1000);
  ASSERT_EQ(two.size(), 1 + 1 + 1 + 2);
  EXPECT_EQ(two[3], std::byte{0x80 | (199 & 0x7f)});
  EXPECT_EQ(two[4], std::byte{199 >> 7});
}

TEST(TopKIndices, SmallerThanFourBytesAtTopKDensities) {
  const std::size_t n = 1 << 20;
  for (const double density : {0.001, 0.01}) {
    const auto idx = random_indices(n, density, 3);
    // Gaps around 1/density: two bytes at 0.1%, one or two at 1%.
    EXPECT_LT(topk_index_bytes(idx, n), idx.size() * (density < 0.005 ? 5 : 4) / 2) << density;
  }
}

TEST(TopKIndices, CorruptStreamsAreRefused) {
  const std::size_t n = 2 * kChunk;
  const std::vector<std::uint32_t> idx = {3, 7, 70000};
  const auto good = code(idx, n);  // {1, 2, 3, 3}, {1, 1, 4464}
  ASSERT_EQ(read_error(good, n, 3), std::nullopt);
  auto with = [&](std::size_t at, std::byte b) {
    auto bad = good;
    bad[at] = b;
    return read_error(bad, n, 3);
  };
  EXPECT_EQ(with(0, std::byte{3}), ErrorCode::InvalidArgument);        // unknown coding
  EXPECT_EQ(with(1, std::byte{0}), ErrorCode::InvalidArgument);        // empty delta chunk
  EXPECT_EQ(with(1, std::byte{3}), ErrorCode::InvalidArgument);        // count past k
  EXPECT_EQ(read_error(good, n, 2), ErrorCode::InvalidArgument);       // more than k
  EXPECT_EQ(read_error(good, n, 4), ErrorCode::InvalidArgument);       // fewer than k
  EXPECT_EQ(read_error(good, kChunk, 3), ErrorCode::InvalidArgument);  // index past n
  auto truncated = good;
  truncated.pop_back();
  EXPECT_EQ(read_error(truncated, n, 3), ErrorCode::InvalidArgument);
  auto longer = good;
  longer.push_back(std::byte{0});
  EXPECT_EQ(read_error(longer, n, 3), ErrorCode::InvalidArgument);
  // A gap past the chunk's end, though below n: 3 + 1 + 65533 = 65537 is in chunk 1.
  EXPECT_EQ(read_error({std::byte{1}, std::byte{2}, std::byte{3}, std::byte{0xfd}, std::byte{0xff},
                        std::byte{0x03}, std::byte{0}},
                       n, 2),
            ErrorCode::InvalidArgument);
  // Overlong varints: a zero continuation byte, and past 32 bits.
  EXPECT_EQ(read_error({std::byte{1}, std::byte{0x81}, std::byte{0x00}, std::byte{4}}, kChunk, 1),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(read_error({std::byte{1}, std::byte{1}, std::byte{0xff}, std::byte{0xff},
                        std::byte{0xff}, std::byte{0xff}, std::byte{0x1f}},
                       kChunk, 1),
            ErrorCode::InvalidArgument);
  // Bitmaps: truncated, and a bit past the last element of a short chunk.
  EXPECT_EQ(read_error({std::byte{2}, std::byte{1}}, 9, 1), ErrorCode::InvalidArgument);
  EXPECT_EQ(read_error({std::byte{2}, std::byte{1}, std::byte{0x02}}, 9, 1),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(read_error({std::byte{2}, std::byte{1}, std::byte{0x01}}, 9, 2), std::nullopt);
}

TEST(TopKIndices, PayloadsAreVersionTwoAndSmallerThanFourBytesPerIndex) {
  CompressionConfig c;
  c.method = Method::TopK;
  c.density = 0.01;
  const auto topk = make_compressor(c);
  const std::size_t n = 1 << 20;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (float& v : x) v = normal(gen);
  std::vector<std::byte> payload(topk->max_encoded_bytes(n));
  Rng rng(1, 0, 0);
  const std::size_t bytes = topk->encode(x, payload, rng);
  const PayloadHeader h = read_header(payload);
  EXPECT_EQ(h.version, 2);
  EXPECT_EQ(h.bucket, kChunk);
  const std::size_t k = topk->k_for(n);
  EXPECT_EQ(bytes, PayloadHeader::kSize + 4 * k + h.bits);
  EXPECT_LT(bytes, PayloadHeader::kSize + 6 * k);  // old: 8 bytes per pair
  // The decode matches the selection: the k largest magnitudes, nothing else.
  std::vector<float> y(n);
  topk->decode(std::span(payload).first(bytes), y);
  std::vector<float> mags(n);
  std::transform(x.begin(), x.end(), mags.begin(), [](float v) { return std::abs(v); });
  std::nth_element(mags.begin(), mags.begin() + static_cast<std::ptrdiff_t>(k - 1), mags.end(),
                   std::greater<>());
  const float kth = mags[k - 1];
  std::size_t kept = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (y[i] != 0.0f) {
      ++kept;
      EXPECT_EQ(y[i], x[i]);
      EXPECT_GE(std::abs(x[i]), kth);
    }
  }
  EXPECT_EQ(kept, k);
  // A version 1 payload is refused.
  auto old = payload;
  old[4] = std::byte{1};
  EXPECT_THROW(topk->decode(std::span(old).first(bytes), y), Error);
}

}  // namespace
}  // namespace frugal::compression

// Top-k index coding (see topk_indices.hpp for the format).

#include "frugal/compression/topk_indices.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <string>

#include "frugal/error.hpp"

namespace frugal::compression {
namespace {

constexpr std::size_t kChunk = kTopKIndexChunk;

std::size_t varint_bytes(std::uint32_t v) noexcept {
  // 7 payload bits per byte; 0 takes one byte.
  return (static_cast<std::size_t>(std::bit_width(v | 1u)) + 6) / 7;
}

std::byte* put_varint(std::byte* out, std::uint32_t v) noexcept {
  while (v >= 0x80u) {
    *out++ = static_cast<std::byte>((v & 0x7fu) | 0x80u);
    v >>= 7;
  }
  *out++ = static_cast<std::byte>(v);
  return out;
}

std::size_t chunk_count(std::size_t n) noexcept {
  return (n + kChunk - 1) / kChunk;
}

// The indices of `all` that fall in [begin, end): all is increasing, so they are one run.
std::span<const std::uint32_t> run_in(std::span<const std::uint32_t> all, std::size_t end) {
  const auto stop = std::lower_bound(all.begin(), all.end(), end,
                                     [](std::uint32_t i, std::size_t e) { return i < e; });
  return all.first(static_cast<std::size_t>(stop - all.begin()));
}

std::size_t delta_bytes(std::span<const std::uint32_t> run, std::size_t begin) noexcept {
  std::size_t bytes = varint_bytes(static_cast<std::uint32_t>(run.size()));
  std::size_t prev = begin;  // the first index is coded as its offset, the others as gap - 1
  for (std::size_t i = 0; i < run.size(); ++i) {
    bytes += varint_bytes(static_cast<std::uint32_t>(run[i] - prev));
    prev = static_cast<std::size_t>(run[i]) + 1;
  }
  return bytes;
}

struct ChunkChoice {
  TopKChunkCoding coding;
  std::size_t body;  // bytes after the coding byte
};

ChunkChoice choose(std::span<const std::uint32_t> run, std::size_t begin, std::size_t len) {
  if (run.empty()) return {TopKChunkCoding::Empty, 0};
  const std::size_t bitmap = (len + 7) / 8;
  // The delta size exceeds the bitmap's once the run is longer than the bitmap (every varint
  // takes at least one byte): skip counting it then.
  if (run.size() >= bitmap) return {TopKChunkCoding::Bitmap, bitmap};
  const std::size_t delta = delta_bytes(run, begin);
  return delta <= bitmap ? ChunkChoice{TopKChunkCoding::Delta, delta}
                         : ChunkChoice{TopKChunkCoding::Bitmap, bitmap};
}

[[noreturn]] void corrupt(const std::string& what) {
  throw Error(ErrorCode::InvalidArgument, "payload: corrupt top-k index stream (" + what + ")");
}

// Reads LEB128 from [at, end): the shortest form of a value below 2^32 only.
std::uint32_t get_varint(const std::byte*& at, const std::byte* end) {
  std::uint32_t v = 0;
  for (int shift = 0; shift < 35; shift += 7) {
    if (at == end) corrupt("truncated varint");
    const auto b = static_cast<std::uint32_t>(*at++);
    if (shift == 28 && (b & 0xf0u) != 0) corrupt("varint past 32 bits");
    v |= (b & 0x7fu) << shift;
    if ((b & 0x80u) == 0) {
      if (b == 0 && shift != 0) corrupt("varint longer than its value needs");
      return v;
    }
  }
  corrupt("varint past 32 bits");
}

}  // namespace

std::size_t topk_index_bytes(std::span<const std::uint32_t> indices, std::size_t n) noexcept {
  std::size_t bytes = 0;
  std::span<const std::uint32_t> rest = indices;
  for (std::size_t begin = 0; begin < n; begin += kChunk) {
    const std::size_t len = std::min(kChunk, n - begin);
    const std::span<const std::uint32_t> run = run_in(rest, begin + len);
    bytes += 1 + choose(run, begin, len).body;
    rest = rest.subspan(run.size());
  }
  return bytes;
}

std::size_t max_topk_index_bytes(std::size_t n, std::size_t k) noexcept {
  // Per chunk: the coding byte, then at most the bitmap, and at most a 3-byte count and 3 bytes
  // per index (counts and offsets are <= 65536 < 2^21). The sum of the minima is at most the
  // minimum of the sums.
  const std::size_t chunks = chunk_count(n);
  std::size_t bitmaps = 0;
  if (n != 0) bitmaps = (chunks - 1) * (kChunk / 8) + (n - (chunks - 1) * kChunk + 7) / 8;
  return chunks + std::min(3 * chunks + 3 * k, bitmaps);
}

double expected_topk_index_bytes(std::size_t n, double k) noexcept {
  if (n == 0) return 0.0;
  const double density = std::clamp(k / static_cast<double>(n), 0.0, 1.0);
  const double q = 1.0 - density;
  const double per_index = 1.0 + std::pow(q, 128.0) + std::pow(q, 16384.0);
  const auto chunk = [&](std::size_t len) {
    const double c = density * static_cast<double>(len);
    if (c == 0.0) return 1.0;
    const double count = c < 128.0 ? 1.0 : c < 16384.0 ? 2.0 : 3.0;
    return 1.0 + std::min(count + c * per_index, std::ceil(static_cast<double>(len) / 8.0));
  };
  const std::size_t full = n / kChunk, rest = n % kChunk;
  return static_cast<double>(full) * chunk(kChunk) + (rest != 0 ? chunk(rest) : 0.0);
}

std::size_t write_topk_indices(std::span<const std::uint32_t> indices, std::size_t n,
                               std::byte* out) noexcept {
  std::byte* const start = out;
  std::span<const std::uint32_t> rest = indices;
  for (std::size_t begin = 0; begin < n; begin += kChunk) {
    const std::size_t len = std::min(kChunk, n - begin);
    const std::span<const std::uint32_t> run = run_in(rest, begin + len);
    rest = rest.subspan(run.size());
    const ChunkChoice c = choose(run, begin, len);
    *out++ = static_cast<std::byte>(c.coding);
    if (c.coding == TopKChunkCoding::Delta) {
      out = put_varint(out, static_cast<std::uint32_t>(run.size()));
      std::size_t prev = begin;
      for (const std::uint32_t i : run) {
        out = put_varint(out, static_cast<std::uint32_t>(i - prev));
        prev = static_cast<std::size_t>(i) + 1;
      }
    } else if (c.coding == TopKChunkCoding::Bitmap) {
      std::fill(out, out + c.body, std::byte{0});
      for (const std::uint32_t i : run) {
        const std::size_t at = i - begin;
        out[at / 8] |= static_cast<std::byte>(1u << (at % 8));
      }
      out += c.body;
    }
  }
  return static_cast<std::size_t>(out - start);
}

void read_topk_indices(std::span<const std::byte> in, std::size_t n, std::size_t k,
                       std::vector<std::uint32_t>& out) {
  out.resize(k);
  std::size_t got = 0;
  const std::byte* at = in.data();
  const std::byte* const end = in.data() + in.size();
  for (std::size_t begin = 0; begin < n; begin += kChunk) {
    const std::size_t len = std::min(kChunk, n - begin);
    if (at == end) corrupt("truncated: no coding byte for the chunk at " + std::to_string(begin));
    const auto coding = static_cast<std::uint8_t>(*at++);
    if (coding == static_cast<std::uint8_t>(TopKChunkCoding::Empty)) continue;
    if (coding == static_cast<std::uint8_t>(TopKChunkCoding::Delta)) {
      const std::uint32_t count = get_varint(at, end);
      if (count == 0 || count > len || count > k - got) {
        corrupt("chunk at " + std::to_string(begin) + " claims " + std::to_string(count) +
                " indices");
      }
      std::size_t next = begin;  // the smallest index the next one may be
      for (std::uint32_t j = 0; j < count; ++j) {
        const std::uint32_t step = get_varint(at, end);
        if (step >= begin + len - next) {
          corrupt("index past the chunk at " + std::to_string(begin));
        }
        next += step;
        out[got++] = static_cast<std::uint32_t>(next);
        ++next;
      }
    } else if (coding == static_cast<std::uint8_t>(TopKChunkCoding::Bitmap)) {
      const std::size_t bytes = (len + 7) / 8;
      if (static_cast<std::size_t>(end - at) < bytes) corrupt("truncated bitmap");
      if (len % 8 != 0 && (static_cast<std::uint32_t>(at[bytes - 1]) >> (len % 8)) != 0) {
        corrupt("bitmap bits past the last element");
      }
      std::size_t count = 0;
      for (std::size_t j = 0; j < bytes; ++j) {
        count += static_cast<std::size_t>(std::popcount(static_cast<std::uint8_t>(at[j])));
      }
      if (count > k - got) corrupt("more than " + std::to_string(k) + " indices");
      for (std::size_t j = 0; j < bytes; ++j) {
        auto bits = static_cast<std::uint32_t>(at[j]);
        while (bits != 0) {
          out[got++] = static_cast<std::uint32_t>(begin + 8 * j +
                                                  static_cast<std::size_t>(std::countr_zero(bits)));
          bits &= bits - 1;
        }
      }
      at += bytes;
    } else {
      corrupt("unknown chunk coding " + std::to_string(coding));
    }
  }
  if (got != k) corrupt(std::to_string(got) + " indices, the header says " + std::to_string(k));
  if (at != end) corrupt(std::to_string(end - at) + " bytes past the last chunk");
}

}  // namespace frugal::compression

#pragma once

// The wire form of top-k's indices (payload version 2, and the sparse allreduce's vectors):
// the n positions are cut into chunks of kTopKIndexChunk, and each chunk is written as one
// coding byte followed by
//   Empty   (0)  nothing: no index in the chunk
//   Delta   (1)  LEB128 varint count, then the first index's offset in the chunk and each next
//                index's gap minus one (indices are strictly increasing), as LEB128 varints
//   Bitmap  (2)  ceil(len / 8) bytes, bit b of byte j set for element chunk_start + 8j + b
// Delta or Bitmap, whichever is smaller (Delta on a tie), is chosen per chunk while writing.
// At 0.1-1% density the gaps fit in one or two bytes, a quarter to half of a u32 index; a
// chunk denser than about one element in eight is cheaper as a bitmap.
//
// Chunk size: 65536 keeps offsets and counts within 3 varint bytes and costs the stream one
// byte per empty chunk (391 bytes for 25.6M elements, under 1% of a 0.1% payload), while a
// dense layer still gets its own bitmap chunks. 4096 would cost 16x that per-chunk overhead
// (6250 chunks) for a finer choice that top-k's scattered selections rarely use.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace frugal::compression {

inline constexpr std::size_t kTopKIndexChunk = 65536;

enum class TopKChunkCoding : std::uint8_t { Empty = 0, Delta = 1, Bitmap = 2 };

// Bytes write_topk_indices writes for `indices` (strictly increasing, each < n).
std::size_t topk_index_bytes(std::span<const std::uint32_t> indices, std::size_t n) noexcept;

// An upper bound of topk_index_bytes over every choice of k indices of n.
std::size_t max_topk_index_bytes(std::size_t n, std::size_t k) noexcept;

// The expected topk_index_bytes of k indices spread uniformly at random over n: the cost
// model's estimate. Per chunk of L elements, holding c = kL/n on average: the coding byte and the
// smaller of the bitmap (L/8 bytes) and the deltas, a count varint and per index
// 1 + q^128 + q^16384 bytes (q = 1 - k/n: a gap is geometric, and takes a second varint byte
// from 128 on, a third from 16384 on).
double expected_topk_index_bytes(std::size_t n, double k) noexcept;

// Writes the coded `indices` (strictly increasing, each < n) at `out`, which holds at least
// topk_index_bytes(indices, n) bytes; returns how many were written.
std::size_t write_topk_indices(std::span<const std::uint32_t> indices, std::size_t n,
                               std::byte* out) noexcept;

// Reads exactly k indices of n from `in` into `out` (resized to k). Throws
// frugal::Error(InvalidArgument) "payload: corrupt top-k index ..." on a truncated or over-long
// stream, an unknown coding byte, a varint longer than its value needs or past 32 bits, a count
// other than k, an index outside its chunk or set padding bits of a bitmap; never reads outside
// `in`.
void read_topk_indices(std::span<const std::byte> in, std::size_t n, std::size_t k,
                       std::vector<std::uint32_t>& out);

}  // namespace frugal::compression

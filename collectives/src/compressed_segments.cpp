#include "compressed_segments.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "fnv1a.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/compression/topk_indices.hpp"
#include "frugal/error.hpp"
#include "lazy_require.hpp"

namespace frugal::detail {

void check_segments(std::span<const std::size_t> segments, std::size_t count) {
  std::size_t sum = 0;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    require(segments[i] > 0, "segments", [&] {
      return "segment " + std::to_string(i) + " is empty (each tensor has elements)";
    });
    require(segments[i] <= count - std::min(sum, count), "segments", [&] {
      return "they add up to more than the buffer's " + std::to_string(count) + " elements";
    });
    sum += segments[i];
  }
  require(segments.empty() || sum == count, "segments", [&] {
    return "they add up to " + std::to_string(sum) + " elements, the buffer holds " +
           std::to_string(count);
  });
}

std::uint64_t segments_digest(std::span<const std::size_t> segments) noexcept {
  if (!splits(segments)) return 0;
  Fnv1a h;
  for (const std::size_t s : segments) h.add64(s);
  return h.value() == 0 ? 1 : h.value();
}

bool splits_payloads(compression::Method method) noexcept {
  using compression::Method;
  return method == Method::OneBit || method == Method::Ternary || method == Method::Qsgd;
}

std::vector<patterns::Range> segment_pieces(std::span<const std::size_t> segments,
                                            patterns::Range range) {
  // An empty range (a two-phase chunk when the buffer has fewer elements than ranks) stays one
  // piece: its empty payload is what every rank expects there.
  std::vector<patterns::Range> pieces;
  if (!splits(segments) || range.count == 0) return {range};
  std::size_t begin = 0;
  for (const std::size_t s : segments) {
    const std::size_t lo = std::max(begin, range.offset);
    const std::size_t hi = std::min(begin + s, range.end());
    if (lo < hi) pieces.push_back({lo, hi - lo});
    begin += s;
    if (begin >= range.end()) break;
  }
  return pieces;
}

std::vector<std::size_t> per_tensor_k(std::span<const std::size_t> segments, std::size_t total_k) {
  std::size_t n = 0;
  for (const std::size_t s : segments) n += s;
  std::vector<std::size_t> ks;
  ks.reserve(segments.size());
  for (const std::size_t s : segments) {
    const double share = static_cast<double>(total_k) * static_cast<double>(s) /
                         static_cast<double>(std::max<std::size_t>(n, 1));
    const auto k = static_cast<std::size_t>(std::llround(share));
    ks.push_back(std::clamp<std::size_t>(k, 1, s));
  }
  return ks;
}

PerTensorTopK::PerTensorTopK(const compression::CompressionConfig& config,
                             std::span<const std::size_t> segments, std::size_t total_k)
    : counts_(segments.begin(), segments.end()),
      value_bytes_(config.values == compression::TopKValues::Fp16 ? 2 : 4) {
  const std::vector<std::size_t> ks = per_tensor_k(segments, total_k);
  compressors_.reserve(ks.size());
  for (const std::size_t k : ks) {
    compression::CompressionConfig c = config;
    c.k = k;
    c.topk_scope = compression::TopKScope::Global;
    compressors_.push_back(compression::make_compressor(c));
    k_ += k;
  }
}

std::size_t PerTensorTopK::encode(std::span<float> values, std::span<std::byte> out,
                                  compression::Rng rng, compression::ErrorFeedback* feedback,
                                  compression::FeedbackInput input) const {
  using compression::PayloadHeader;
  // Each segment's payload in turn; its values and indices (moved by the segment's offset) are
  // gathered, then laid out as one payload: values, then the indices coded over the buffer.
  thread_local std::vector<std::byte> piece;
  thread_local std::vector<std::byte> merged_values;
  thread_local std::vector<std::uint32_t> merged_indices, piece_indices;
  merged_values.clear();
  merged_indices.clear();
  PayloadHeader merged;
  std::size_t offset = 0;
  for (std::size_t s = 0; s < counts_.size(); ++s) {
    const compression::Compressor& c = *compressors_[s];
    const std::span<float> x = values.subspan(offset, counts_[s]);
    piece.resize(c.max_encoded_bytes(x.size()));
    const std::size_t bytes =
        feedback != nullptr
            ? compression::encode_with_feedback(c, *feedback, x, piece, rng, x, offset, input)
            : c.encode_apply(x, piece, rng, x);
    const PayloadHeader h = compression::read_header(std::span(piece).first(bytes));
    if (s == 0) merged = h;
    merged.flags |= h.flags;
    const std::byte* body = piece.data() + PayloadHeader::kSize;
    const std::size_t value_bytes = value_bytes_ * h.k;
    compression::read_topk_indices(
        std::span(piece).subspan(PayloadHeader::kSize + value_bytes, h.bits), x.size(), h.k,
        piece_indices);
    for (const std::uint32_t i : piece_indices) {
      merged_indices.push_back(i + static_cast<std::uint32_t>(offset));
    }
    merged_values.insert(merged_values.end(), body, body + value_bytes);
    offset += counts_[s];
  }
  merged.count = offset;
  merged.k = merged_indices.size();
  std::byte* at = out.data() + PayloadHeader::kSize;
  if (!merged_values.empty()) std::memcpy(at, merged_values.data(), merged_values.size());
  const std::size_t index_bytes =
      compression::write_topk_indices(merged_indices, offset, at + merged_values.size());
  merged.bits = static_cast<std::uint32_t>(index_bytes);
  compression::write_header(merged, out);
  return PayloadHeader::kSize + merged_values.size() + index_bytes;
}

}  // namespace frugal::detail

#include "sparse_vector.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "frugal/compression/half.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/compression/topk_indices.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

// Wire form: u32 magic, u32 form, u64 entries, then for sparse `entries` f32 values and the
// indices coded as top-k payloads code them (topk_indices.hpp), to the end of the message; for
// dense `size` f32 values. Form 0 (u32 indices) is no longer sent and refused.
constexpr std::uint32_t kMagic = 0x56535246;  // "FRSV"
constexpr std::uint32_t kSparseForm = 2, kDenseForm = 1;
constexpr std::size_t kHead = 16;

[[noreturn]] void malformed(const std::string& why) {
  throw Error(ErrorCode::Mismatch, "sparse allreduce message: " + why);
}

}  // namespace

SparseVector SparseVector::from_topk_payload(std::span<const std::byte> payload, std::size_t size) {
  const compression::PayloadHeader h = compression::read_header(payload);
  if (h.method != compression::Method::TopK || h.count != size) {
    throw Error(ErrorCode::Internal, "not a top-k payload for this buffer");
  }
  const auto k = static_cast<std::size_t>(h.k);
  const bool half_values = h.variant == 1;  // TopKValues::Fp16
  const std::size_t values = k * (half_values ? 2 : 4);
  if (payload.size() != compression::PayloadHeader::kSize + values + h.bits) {
    throw Error(ErrorCode::Internal, "top-k payload size does not match its header");
  }
  SparseVector v(size);
  v.value_.resize(k);
  const std::byte* at = payload.data() + compression::PayloadHeader::kSize;
  compression::read_topk_indices(payload.subspan(compression::PayloadHeader::kSize + values), size,
                                 k, v.index_);
  if (half_values) {
    for (std::size_t i = 0; i < k; ++i) {
      std::uint16_t h16;
      std::memcpy(&h16, at + i * 2, 2);
      v.value_[i] = compression::half_to_float(h16);
    }
  } else if (k > 0) {
    std::memcpy(v.value_.data(), at, k * 4);
  }
  return v;
}

std::size_t SparseVector::wire_bytes() const noexcept {
  if (dense_) return kHead + size_ * 4;
  return kHead + index_.size() * 4 + compression::topk_index_bytes(index_, size_);
}

std::size_t SparseVector::max_wire_bytes(std::size_t size) noexcept {
  // Values and coded indices grow with the entries, so `size` entries is the largest sparse
  // form, and it is above the dense one (each chunk's coding byte at least).
  return kHead + size * 4 + compression::max_topk_index_bytes(size, size);
}

void SparseVector::serialize(std::span<std::byte> out) const {
  const std::uint32_t form = dense_ ? kDenseForm : kSparseForm;
  const std::uint64_t entries = dense_ ? size_ : index_.size();
  std::memcpy(out.data(), &kMagic, 4);
  std::memcpy(out.data() + 4, &form, 4);
  std::memcpy(out.data() + 8, &entries, 8);
  std::byte* at = out.data() + kHead;
  if (!value_.empty()) std::memcpy(at, value_.data(), value_.size() * 4);
  if (!dense_) compression::write_topk_indices(index_, size_, at + value_.size() * 4);
}

SparseVector SparseVector::deserialize(std::span<const std::byte> bytes, std::size_t size) {
  if (bytes.size() < kHead) malformed("truncated (" + std::to_string(bytes.size()) + " bytes)");
  std::uint32_t magic, form;
  std::uint64_t entries;
  std::memcpy(&magic, bytes.data(), 4);
  std::memcpy(&form, bytes.data() + 4, 4);
  std::memcpy(&entries, bytes.data() + 8, 8);
  if (magic != kMagic || (form != kSparseForm && form != kDenseForm)) {
    malformed("bad magic or form " + std::to_string(form));
  }
  SparseVector v(size);
  const std::byte* at = bytes.data() + kHead;
  if (form == kDenseForm) {
    if (entries != size || bytes.size() != kHead + size * 4) {
      malformed("dense vector of " + std::to_string(entries) + " elements, expected " +
                std::to_string(size));
    }
    v.dense_ = true;
    v.value_.resize(size);
    if (size > 0) std::memcpy(v.value_.data(), at, size * 4);
    return v;
  }
  if (entries > size || bytes.size() < kHead + entries * 4) malformed("size disagrees");
  v.value_.resize(entries);
  if (entries > 0) std::memcpy(v.value_.data(), at, entries * 4);
  try {
    compression::read_topk_indices(bytes.subspan(kHead + entries * 4), size, entries, v.index_);
  } catch (const Error& e) {
    malformed(e.what());
  }
  return v;
}

SparseVector SparseVector::merged(const SparseVector& other) const {
  SparseVector out(size_);
  if (dense_ || other.dense_) {
    const SparseVector& d = dense_ ? *this : other;
    const SparseVector& s = dense_ ? other : *this;
    out.dense_ = true;
    out.value_ = d.value_;
    if (s.dense_) {
      for (std::size_t i = 0; i < size_; ++i) out.value_[i] += s.value_[i];
    } else {
      for (std::size_t j = 0; j < s.index_.size(); ++j) out.value_[s.index_[j]] += s.value_[j];
    }
    return out;
  }
  out.index_.reserve(index_.size() + other.index_.size());
  out.value_.reserve(index_.size() + other.index_.size());
  std::size_t a = 0, b = 0;
  while (a < index_.size() || b < other.index_.size()) {
    if (b == other.index_.size() || (a < index_.size() && index_[a] < other.index_[b])) {
      out.index_.push_back(index_[a]);
      out.value_.push_back(value_[a++]);
    } else if (a == index_.size() || other.index_[b] < index_[a]) {
      out.index_.push_back(other.index_[b]);
      out.value_.push_back(other.value_[b++]);
    } else {
      out.index_.push_back(index_[a]);
      out.value_.push_back(value_[a++] + other.value_[b++]);
    }
  }
  return out;
}

void SparseVector::keep_largest(std::size_t k) {
  if (dense_) throw Error(ErrorCode::Internal, "keep_largest on a dense vector");
  if (index_.size() <= k) return;
  // Magnitude order by the bit pattern (as top-k's selection: NaN and Inf above everything),
  // then the lower index first: a total order, so the k chosen do not depend on the sort.
  std::vector<std::uint32_t> order(index_.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  const auto key = [&](std::uint32_t i) {
    std::uint32_t u;
    std::memcpy(&u, &value_[i], 4);
    return u & 0x7fffffffu;
  };
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1), order.end(),
                   [&](std::uint32_t a, std::uint32_t b) {
                     const std::uint32_t ka = key(a), kb = key(b);
                     return ka != kb ? ka > kb : a < b;
                   });
  std::vector<bool> keep(index_.size(), false);
  for (std::size_t j = 0; j < k; ++j) keep[order[j]] = true;
  std::size_t c = 0;
  for (std::size_t i = 0; i < index_.size(); ++i) {
    if (!keep[i]) continue;
    index_[c] = index_[i];
    value_[c] = value_[i];
    ++c;
  }
  index_.resize(c);
  value_.resize(c);
}

SparseVector SparseVector::from_entries(std::size_t size, std::vector<std::uint32_t> indices,
                                        std::vector<float> values) {
  SparseVector v(size);
  v.index_ = std::move(indices);
  v.value_ = std::move(values);
  return v;
}

void SparseVector::make_dense() {
  if (dense_) return;
  std::vector<float> dense(size_, 0.0f);
  for (std::size_t j = 0; j < index_.size(); ++j) dense[index_[j]] = value_[j];
  value_ = std::move(dense);
  index_.clear();
  index_.shrink_to_fit();
  dense_ = true;
}

void SparseVector::scatter_to(std::span<float> out) const {
  if (dense_) {
    std::copy(value_.begin(), value_.end(), out.begin());
    return;
  }
  std::fill(out.begin(), out.end(), 0.0f);
  for (std::size_t j = 0; j < index_.size(); ++j) out[index_[j]] = value_[j];
}

}  // namespace frugal::detail

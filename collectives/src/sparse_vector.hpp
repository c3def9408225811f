#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace frugal::detail {

// A vector of `size` floats held either as sorted (index, value) pairs or densely; the working
// form of the sparse allreduce algorithms.
class SparseVector {
 public:
  explicit SparseVector(std::size_t size) : size_(size) {}

  // The (index, value) pairs of a top-k payload (Compressor output, header included).
  static SparseVector from_topk_payload(std::span<const std::byte> payload, std::size_t size);

  std::size_t size() const noexcept { return size_; }
  bool dense() const noexcept { return dense_; }
  std::size_t nonzeros() const noexcept { return dense_ ? size_ : index_.size(); }

  // Bytes of the wire form: sparse, 4 per value and the coded indices (about 1-2 bytes each at
  // top-k densities, at most a bitmap); dense, 4 per element.
  std::size_t wire_bytes() const noexcept;
  // The largest wire form of any vector of `size` elements: what a receive buffer must hold.
  // A sparse vector of every element (its indices a bitmap) is larger than the dense form, and
  // gTop-k, which never densifies, sends one at density 1. A transport may write past a buffer
  // that a message overflows (Open MPI 4.1's shared-memory single copy does), so this bounds
  // every message that can be sent, not only the ones the algorithms usually send.
  static std::size_t max_wire_bytes(std::size_t size) noexcept;
  // Past half density: the rule from the days of 8-byte pairs, kept because merging a sparse
  // vector that dense costs more than adding dense ones, and because the switch shows in the
  // result's bits (a dense add turns a lone -0 into +0 where a sparse merge copies it), so
  // results stay as they were. The coded sparse form is still smaller than dense there.
  bool past_break_even() const noexcept { return !dense_ && index_.size() * 8 > size_ * 4; }

  void serialize(std::span<std::byte> out) const;
  // Throws Mismatch on a malformed message or one for a different size.
  static SparseVector deserialize(std::span<const std::byte> bytes, std::size_t size);

  // this + other. Where only one side has an entry its value is copied; where both do they are
  // added, so a + b and b + a give bit-identical vectors.
  SparseVector merged(const SparseVector& other) const;
  void make_dense();
  // gTop-k's re-sparsification: keeps the k entries of largest magnitude, ties to the lower
  // index (so every rank holding the same vector keeps the same ones), in index order. Sparse
  // vectors only.
  void keep_largest(std::size_t k);

  // The sparse form's entries (empty when dense).
  std::span<const std::uint32_t> indices() const noexcept { return index_; }
  std::span<const float> values() const noexcept { return value_; }
  // A sparse vector of the given entries (indices strictly increasing, each < size).
  static SparseVector from_entries(std::size_t size, std::vector<std::uint32_t> indices,
                                   std::vector<float> values);

  // Writes the vector densely into `out` (zeros where there is no entry).
  void scatter_to(std::span<float> out) const;

 private:
  std::size_t size_;
  bool dense_ = false;
  std::vector<std::uint32_t> index_;  // strictly increasing (sparse form)
  std::vector<float> value_;          // values of index_, or all `size_` values (dense form)
};

}  // namespace frugal::detail

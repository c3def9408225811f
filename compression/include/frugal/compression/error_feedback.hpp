#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "frugal/compression/compressor.hpp"

namespace frugal::compression {

// The residual memory of one gradient buffer (or bucket, or a server's chunk): what compression
// has dropped so far, added back before the next encode (Seide et al. 2014; Karimireddy et al.
// 2019; GRACE's "residual" memory).
//
//   compensated = grad + decay * residual         (compensate)
//   residual    = compensated - applied           (absorb)
//
// where `applied` is what the receivers reconstruct (Compressor::encode_apply writes it). With
// decay 1 the invariant sum(applied over T steps) + residual_T = sum(grads) holds exactly up to
// float rounding, so nothing is lost, only delayed. decay < 1 forgets old residuals.
//
// Spans passed to compensate/absorb cover elements [offset, offset + span.size()) of the
// buffer, so one object can serve a buffer processed in pieces. Not thread-safe for
// overlapping ranges; disjoint ranges may be processed concurrently.
class ErrorFeedback {
 public:
  // Throws frugal::Error(InvalidArgument) unless 0 <= decay <= 1.
  explicit ErrorFeedback(std::size_t size, float decay = 1.0f);

  std::size_t size() const noexcept { return residual_.size(); }
  float decay() const noexcept { return decay_; }
  std::span<const float> residual() const noexcept { return residual_; }

  // grad += decay * residual, in place.
  void compensate(std::span<float> grad, std::size_t offset = 0) const;
  // compensated = grad + decay * residual.
  void compensate(std::span<const float> grad, std::span<float> compensated,
                  std::size_t offset = 0) const;
  // residual = compensated - applied.
  void absorb(std::span<const float> compensated, std::span<const float> applied,
              std::size_t offset = 0);
  // residual[indices[i]] += values[i]: mass a collective sent but did not deliver (gTop-k's
  // cuts) goes back. Throws InvalidArgument naming `indices` if one is out of range.
  void add(std::span<const std::uint32_t> indices, std::span<const float> values);
  // Forgets everything (e.g. after a step skipped for NaN, or when the method changes).
  void reset() noexcept;
  // residual *= factor. The residual is gradient mass that the next step applies at its own
  // learning rate: when the LR changes from lr_prev to lr_now, factor lr_prev / lr_now keeps
  // lr * residual, the update the residual stands for, unchanged. Throws InvalidArgument naming
  // `factor` unless it is finite and >= 0; the residual is unchanged then.
  void scale(float factor);

  // Checkpointing: a self-describing byte image (magic, version, size, decay, residual).
  std::vector<std::byte> save() const;
  // Restores an image made by save(). Throws frugal::Error(InvalidArgument) on a malformed image
  // and frugal::Error(Mismatch) if it was saved for a different size; on error the state is
  // unchanged.
  void restore(std::span<const std::byte> image);

 private:
  friend float max_compensated_magnitude(std::span<const float>, const ErrorFeedback*, std::size_t);
  friend struct FeedbackEncoder;
  void check_range(std::size_t count, std::size_t offset) const;

  std::vector<float> residual_;
  float decay_;
};

// What the caller of an error-compensated encode knows about its input.
enum class FeedbackInput : std::uint8_t {
  Unchecked,
  // max_compensated_magnitude(grad, &feedback, offset) <= compressor.flag_free_magnitude() was
  // established beforehand (the compressed allreduce scans every rank's input and agrees on it
  // before it encodes): no block can flag, so under NonFinitePolicy::Error the pass keeps no copy
  // of the old residual and reconstructs once. Top-k, which has no ranges,
  // ignores it and keeps its rollback. Should a block flag all the same, the encode still throws,
  // but the residual is then unspecified.
  FlagFree,
};

// One error-compensated encode: compensated = grad + decay * residual, encode it, residual =
// compensated - applied. `applied` (n elements, may alias grad) receives what the receivers
// reconstruct. Returns the payload size. Throws what Compressor::encode throws; on a throw the
// residual is unchanged.
//
// Fused: one pass over the buffer in cache-sized blocks (compensate, encode the block's part of
// the payload, reconstruct it, write residual and applied while the block is in cache). Sampled
// top-k takes its threshold from a sample of compensated values and writes each block as if
// every candidate were selected (the usual outcome), repairing the rest afterwards; exact top-k,
// which needs the whole buffer for its selection, compensates, encodes, then writes residual and
// applied in one blocked pass. Payload, applied, residual and rng are bit-identical to the
// unfused sequence compensate / Compressor::encode / decode / absorb. Under
// NonFinitePolicy::Error `applied` holds the old residual until the pass is known clean (then it
// is written once more), so that a throw can restore the residual (unless `input` is FlagFree);
// after a throw `applied` (and grad, when they alias) is unspecified.
std::size_t encode_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                 std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                                 std::span<float> applied, std::size_t offset = 0,
                                 FeedbackInput input = FeedbackInput::Unchecked);

// encode_with_feedback for a caller that never reads the reconstruction (the two-phase
// allreduce, whose ranks decode the payloads themselves): payload, residual and rng as
// encode_with_feedback leaves them, bit for bit, and nothing else is written (`grad` is only
// read). The methods with ranges (all but top-k) skip the write of `applied`; top-k, whose
// reconstruction is part of the computation, writes it to a temporary.
std::size_t encode_payload_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                         std::span<const float> grad, std::span<std::byte> out,
                                         Rng& rng, std::size_t offset = 0,
                                         FeedbackInput input = FeedbackInput::Unchecked);

// The largest |grad[i] + decay * residual[offset + i]| (|grad[i]| without feedback), computed as
// encode_with_feedback computes each compensated element; NaN if any is NaN, Inf if any is Inf
// (and none NaN). Compared with Compressor::flag_free_magnitude(), it tells ahead of an encode
// whether the payload could be flagged (NaN, Inf, or a value out of the format's range).
// Throws frugal::Error(InvalidArgument) if the range exceeds the residual.
float max_compensated_magnitude(std::span<const float> grad, const ErrorFeedback* feedback,
                                std::size_t offset = 0);

}  // namespace frugal::compression

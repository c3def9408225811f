#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "frugal/compression/error_feedback.hpp"

namespace frugal {

namespace detail {
class StateBinding;
}

// What a compressed allreduce of one buffer (or bucket) remembers between calls: the worker-side
// error-feedback residual (what this rank's encode dropped), the server-side residual of the
// chunk this rank re-encodes in the two-phase algorithm, and the step counter that keys the
// random streams. Owned by the caller, one per buffer; saved in checkpoints.
//
// The first allreduce binds the state to its layout (element count, ranks, rank, method, op,
// top-k's k, segments, gTop-k on or off, error feedback on or off): the residuals mean something
// for that layout only (an Average server residual is 1/P of a Sum one; a top-k residual holds
// what k left out, a gTop-k one also what the cuts of the sum gave back), so
// using the state with another layout throws Mismatch naming what changed, until reset(). Not
// thread-safe: one allreduce at a time.
class AllreduceState {
 public:
  // `decay` scales the residual before it is added back (1: plain error feedback; < 1: GRACE's
  // residual with decay). Throws InvalidArgument unless 0 <= decay <= 1.
  explicit AllreduceState(float decay = 1.0f);

  std::uint64_t steps() const noexcept { return steps_; }
  float decay() const noexcept { return decay_; }
  bool bound() const noexcept { return layout_.has_value(); }

  // The residuals (empty before the first allreduce, or without that side).
  std::span<const float> worker_residual() const noexcept;
  std::span<const float> server_residual() const noexcept;

  // Forgets the residuals and the layout (e.g. after a step skipped for NaN). Keeps the step.
  void reset() noexcept;

  // Multiplies the worker and server residuals by `factor`: lr_prev / lr_now before a step whose
  // learning rate differs from the one the residuals were collected at, so that what they carry
  // over is applied at the rate it was dropped at (with warmup from 0.1 to 0.8 a residual would
  // otherwise land up to 8x too large). Throws InvalidArgument naming `factor` unless it is
  // finite and >= 0. No effect before the first allreduce.
  void scale_residuals(float factor);

  // A self-describing byte image (magic, version, layout, step, residuals). restore() throws
  // InvalidArgument on a malformed image; the state is unchanged then. Images of version 1
  // (libfrugal 0.3, whose layout has no op or k) are read too: their op and k are taken from
  // the first allreduce after the restore; so are version-2 images, whose layout has no
  // segments: they take the first allreduce's segments; and version-3 images, whose layout has
  // no gTop-k flag: they take the first allreduce's.
  std::vector<std::byte> save() const;
  void restore(std::span<const std::byte> image);

  struct Layout {
    std::uint64_t count = 0;
    std::int32_t ranks = 0;
    std::int32_t rank = 0;
    std::uint8_t method = 0;
    std::uint8_t feedback = 0;  // whether residuals are kept
    std::uint8_t op = 0;        // ReduceOp; 0: not recorded (a version-1 image)
    std::uint64_t k = 0;        // top-k's k for `count` elements, else 0
    // A digest of the buffer's segments (AllreduceOptions::segments), 0 for one tensor.
    std::uint64_t segments = 0;
    // 0 in a layout restored from an image of version 1 or 2, which did not record segments:
    // the first allreduce after the restore supplies them.
    std::uint8_t segments_recorded = 1;
    std::uint8_t gtopk = 0;  // CompressionConfig::gtopk
    // 0 in a layout restored from an image of version 1 to 3, which did not record gtopk: the
    // first allreduce after the restore supplies it.
    std::uint8_t gtopk_recorded = 1;
    friend bool operator==(const Layout&, const Layout&) = default;
  };

 private:
  friend class detail::StateBinding;

  float decay_;
  std::uint64_t steps_ = 0;
  std::optional<Layout> layout_;
  std::optional<compression::ErrorFeedback> worker_;
  std::optional<compression::ErrorFeedback> server_;
};

}  // namespace frugal

#pragma once

// The guardrail's per-bucket bookkeeping (GradientBuckets owns one GuardrailBucket per bucket):
// the rung, the smoothed signals, the hysteresis counters and the residual mass flushed at the
// last change of setting. The decision is a pure function of the agreed numbers, so ranks that
// feed it the same reduced sums take the same decisions.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "byte_image.hpp"
#include "frugal/collectives/guardrail.hpp"

namespace frugal::detail {

struct GuardrailBucket {
  std::size_t rung = 0;
  bool seeded = false;  // the EMAs hold a value (false after a change of rung)
  double ratio = 0;     // EMA of ||r|| / ||x||
  double relative_error = 0;
  std::uint64_t calm = 0;          // consecutive steps with ratio < lower
  std::uint64_t since_change = 0;  // steps since the last change of rung (or the start)
  // What error feedback held when the setting last changed (the worker residual, plus the
  // server residual of this rank's two-phase chunk in input units): added to the bucket's next
  // input, which is what error feedback would have done with it, and cleared once a step has
  // reduced it. Never dropped: a skipped or undone step keeps it.
  std::vector<float> carry;

  friend bool operator==(const GuardrailBucket&, const GuardrailBucket&) = default;
};

// This step's sums over every rank for one bucket (the agreed allreduce's output).
struct GuardrailSums {
  double residual = 0;  // sum over ranks of ||r_after||^2
  double input = 0;     // sum over ranks of ||x||^2
  double encoded = 0;   // sum over ranks of ||x + r_before||^2
};

// Updates `bucket` with one step's agreed sums; returns the new rung when the bucket changes
// setting (the caller flushes the residual into `carry` and resets the bucket's state). `rungs` is
// the length of the bucket's ladder. A step whose input is all zero changes nothing but the
// step counters.
std::optional<std::size_t> guardrail_decide(GuardrailBucket& bucket,
                                            const GuardrailOptions& options,
                                            const GuardrailSums& sums, std::size_t rungs);

// sum of x^2 and sum of (x + r)^2 in one pass (r may be empty: zero), in double.
void guardrail_input_norms(std::span<const float> x, std::span<const float> r, double& input,
                           double& encoded);
double guardrail_square_norm(std::span<const float> x);

void guardrail_save(ImageWriter& w, const GuardrailBucket& bucket);
GuardrailBucket guardrail_load(ImageReader& r);

// 64 bits that every rank must share: the options and every bucket's rung. The allreduce that
// agrees on the sums carries it in 16-bit pieces with their squares, so that a rank with other
// options or rungs is found (sum^2 != P * sum of squares) instead of silently mixing ladders.
std::uint64_t guardrail_digest(const GuardrailOptions& options, std::span<const std::size_t> rungs);

}  // namespace frugal::detail

#pragma once

// The accuracy guardrail of GradientBuckets (BucketOptions::guardrail): each compressed bucket
// watches how much of its gradient error feedback is holding back, and moves to a denser
// compression setting when that grows past a bound, back to a sparser one when it has stayed low.
//
// The signal, per bucket and step: ratio = ||r|| / ||x||, r the bucket's worker residual after the
// step (what compression left out and error feedback carries into the next step) and x the
// bucket's input this step; both norms are over every rank's vectors taken together
// (sqrt(sum_ranks ||r||^2 / sum_ranks ||x||^2)), so that every rank sees the same number. Also
// tracked, for the log: the compression's relative error ||v - C(v)|| / ||v|| with v = x + the
// residual from before the step (what the encode was given). Both are smoothed by an EMA.
//
// The ladder (guardrail_ladder): rung 0 is the configured setting, each rung above sends more:
//  - top-k: density (or k) x4 per rung while the density stays <= 0.25, then dense;
//  - QSGD: bits 2 -> 4 -> 8, then fp16, then dense;
//  - 1-bit, ternary: fp16, then dense;
//  - fp16, bf16: dense.
// A top-k rung past a density of 0.25 would send more bytes than fp16 (index and value per
// element) for a worse result, hence the jump to dense there.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "frugal/compression/compressor.hpp"

namespace frugal {

struct GuardrailOptions {
  // Off by default: every bucket keeps the configured setting.
  bool enabled = false;
  // A bucket whose smoothed ratio exceeds `upper` steps one rung up (denser); one whose smoothed
  // ratio has stayed below `lower` for `patience` consecutive steps steps one rung down. The gap
  // between the bounds and the patience are the hysteresis that keeps a bucket from oscillating.
  // 0 <= lower < upper, both finite.
  double lower = 2.0;
  double upper = 8.0;
  // EMA weight of the newest step's ratio, in (0, 1].
  double smoothing = 0.1;
  std::size_t patience = 200;  // >= 1
  // After any change of rung, the EMA starts afresh and the bucket does not step up again for
  // this many steps: the new setting's residual needs a few steps to settle. >= 1.
  std::size_t cooldown = 20;
};

// One change of a bucket's setting, identical on every rank.
struct GuardrailEvent {
  std::uint64_t step = 0;  // the buckets' reduced steps so far, this one included (1-based)
  std::size_t bucket = 0;
  std::size_t from_rung = 0, to_rung = 0;
  std::string from, to;       // describe() of the two settings
  double ratio = 0;           // the smoothed residual ratio that decided it
  double relative_error = 0;  // the smoothed relative error of the compression
};

// The rungs for a bucket of `count` elements whose configured setting is `base`: rung 0 is
// `base`, the last is dense (method None). Method None: just {base}. Every field of `base` not
// named in the ladder (non-finite policy, selection, scope, bucket size, ...) is kept while the
// method stays the same.
std::vector<compression::CompressionConfig> guardrail_ladder(
    const compression::CompressionConfig& base, std::size_t count);

// A short name of a setting for logs: "topk(density=0.04)", "topk(k=400)", "qsgd(bits=8)",
// "onebit", "fp16", "dense".
std::string describe(const compression::CompressionConfig& config);

// Throws InvalidArgument naming the field (guardrail.lower, ...) when `options` is enabled and
// out of range.
void validate(const GuardrailOptions& options);

}  // namespace frugal

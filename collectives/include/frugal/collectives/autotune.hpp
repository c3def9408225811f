#pragma once

// compression = auto for GradientBuckets (BucketOptions::autotune): each compressed bucket tries
// a list of candidate settings online, measures what each costs on this job's links, and keeps
// the cheapest; every rank takes the same decisions.
//
// Schedule (steps counted as the buckets' reduced steps; a skipped step does not count):
//  - steps 1..warmup: every bucket runs candidates[0] (dense by default: the early gradients are
//    the largest and change fastest, and nothing is being measured yet);
//  - then a trial: candidate c runs on every bucket for trial_steps steps, c = 0, 1, ... (all
//    buckets in lockstep, so that the buckets around one being measured run the same setting);
//  - at the end of the trial each bucket keeps the earliest (densest, in the default order)
//    candidate whose cost (the median of its trial_steps agreed costs) is within `margin` of the
//    lowest: a sparser setting has to be clearly cheaper to be worth its loss of accuracy, and
//    costs that differ by noise alone (shared memory, where every candidate takes about the
//    same) leave the bucket on the denser one;
//  - with retune > 0, a new trial starts retune steps after the end of the last one.
//
// The cost of a bucket at a step: the wall time of its allreduce on the communicator's progress
// engine, from when the engine starts it to when it returns (compensate, encode, the exchange,
// decode). Not from launch: a bucket queued behind an earlier one would be charged for that
// one's time. The exchange includes waiting for peers still in backward, which is the same for
// every candidate and only adds noise, hence the median. Each rank's costs travel in one small
// allgather after the buckets' own (8 bytes per compressed bucket plus 8, from each rank), only on
// trial steps and on the first step after construction or restore_state; every rank takes the max
// over the ranks (a bucket is reduced when its slowest rank is done), so the numbers, and therefore
// the decisions, are identical everywhere. A 64-bit digest of the options, the step count and every
// bucket's candidate rides along: ranks that disagree get Mismatch.
//
// A change of candidate is a change of setting like the guardrail's (guardrail.hpp): the
// bucket's residuals are flushed into its carry, added to the next input, and a fresh state
// starts; no gradient mass is lost. With the guardrail enabled too, its ladder is built from the
// bucket's current candidate (rung 0) and it still steps the bucket denser on top; a change of
// candidate puts the bucket back on rung 0 of the new ladder.
//
// Default candidates (default_autotune_candidates), densest first: dense, fp16, ternary. These
// are the settings measured within 0.5 points of dense top-1 on the reference trainer
// (bench/results/train-defaults/table.md: ternary + EF -0.10; fp16 is a cast with a relative
// error of 2^-11). Top-1% (-0.60 with momentum correction) and 1-bit (-0.82 over two seeds) were
// measured outside that budget, so they are candidates only when the caller lists them.
//
// Not done (limits of this first cut): no prior from a cost model (every candidate is tried);
// the algorithm is each candidate's Auto choice (the candidates are methods, not method x
// algorithm); a bucket is tuned on its own time, not on the step time (overlap with backward is
// what makes a bucket's time matter or not); elastic redistribution of auto images.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "frugal/compression/compressor.hpp"

namespace frugal {

struct AutotuneOptions {
  // Off by default. On, BucketOptions::allreduce.compression.method must be None (auto chooses
  // it; the config's other fields, e.g. non_finite, are the base of the default candidates) and
  // allreduce.error_feedback on.
  bool enabled = false;
  // The settings to choose from, densest first (ties go to the earlier). Empty: the defaults
  // above. At most 16, each one a valid compression config.
  std::vector<compression::CompressionConfig> candidates;
  std::size_t warmup = 50;      // steps of candidates[0] before the first trial
  std::size_t trial_steps = 5;  // steps per candidate in a trial, >= 1 (>= 3 keeps the first
                                // step's allocations out of the median)
  std::size_t retune = 0;       // steps between the end of a trial and the next one; 0: never
  // A candidate is kept when its cost is at most (1 + margin) x the lowest; the earliest such.
  // Finite and >= 0; 0 takes the lowest (ties to the earlier).
  double margin = 0.1;
  // Optional: the cost of bucket `bucket` at a trial step when it ran `setting` and its
  // allreduce took `seconds` on this rank; the measured seconds when unset. For callers with a
  // cost of their own (bytes on a metered link, a model's prediction) and for tests. Called in
  // finish() on the calling thread; must return a finite value >= 0 (else InvalidArgument naming
  // autotune.cost on every rank).
  std::function<double(std::size_t bucket, const compression::CompressionConfig& setting,
                       double seconds)>
      cost;
};

// One change of a bucket's candidate, or a decision, identical on every rank. It applies from
// the step after `step`.
struct AutotuneEvent {
  std::uint64_t step = 0;  // the buckets' reduced steps so far, this one included (1-based)
  std::size_t bucket = 0;
  std::string from, to;   // describe() of the settings (equal for a decision that keeps it)
  bool decision = false;  // the end of a trial (else: the trial moves on to the next candidate)
  // At a decision: each candidate's agreed cost (seconds, or the cost hook's unit), in
  // candidate order.
  std::vector<double> costs;
};

// dense, fp16 and ternary built on `base` (its method replaced; its other fields kept).
std::vector<compression::CompressionConfig> default_autotune_candidates(
    const compression::CompressionConfig& base);

// Throws InvalidArgument naming the field (autotune.trial_steps, autotune.margin,
// autotune.candidates) when
// `options` is enabled and out of range.
void validate(const AutotuneOptions& options);

}  // namespace frugal

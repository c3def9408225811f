#pragma once

// compression = auto's per-bucket bookkeeping (GradientBuckets owns one AutotuneBucket per
// compressed bucket) and its schedule. Like the guardrail's, every decision is a pure function
// of agreed numbers and the step count, so ranks that agree on them decide alike.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "byte_image.hpp"
#include "frugal/collectives/autotune.hpp"

namespace frugal::detail {

struct AutotuneBucket {
  std::size_t current = 0;  // the candidate the bucket runs
  // Per candidate: the agreed costs of the trial under way (emptied at its decision).
  std::vector<std::vector<double>> samples;
};

// What reduced step `step` (1-based) runs under `options` with `candidates` candidates.
struct AutotunePhase {
  bool trial = false;
  std::size_t candidate = 0;  // during a trial
  bool last = false;          // the trial's last step: its decision follows
};
AutotunePhase autotune_phase(const AutotuneOptions& options, std::size_t candidates,
                             std::uint64_t step);

// The first candidate whose median cost is at most (1 + margin) x the lowest median; `medians`
// gets every candidate's median (0 for one without samples, which is never chosen unless all
// are empty).
std::size_t autotune_choose(std::span<const std::vector<double>> samples, double margin,
                            std::vector<double>& medians);

// 64 bits every rank must share: the options, the step count and each bucket's candidate.
std::uint64_t autotune_digest(const AutotuneOptions& options,
                              std::span<const compression::CompressionConfig> candidates,
                              std::uint64_t steps, std::span<const std::size_t> current);

void autotune_save(ImageWriter& w, const AutotuneBucket& bucket);
AutotuneBucket autotune_load(ImageReader& r);

}  // namespace frugal::detail

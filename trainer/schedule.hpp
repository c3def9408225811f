#pragma once

// The training recipe as pure functions of (epoch, step): learning rate (linear scaling rule,
// gradual warmup, step or cosine decay), global batch size per epoch (growing batch) and the
// split of a rank's batch into micro-batches for gradient accumulation. No state, no torch: the
// trainer asks these functions every iteration, and the unit tests check exact values.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/enum_names.hpp"

namespace frugal::train {

enum class Decay { None, Step, Cosine };

}  // namespace frugal::train

namespace frugal {

// --lr-decay's values.
template <>
struct EnumNames<train::Decay> {
  using E = train::Decay;
  static constexpr std::array<EnumName<E>, 3> table{
      {{E::Step, "step"}, {E::Cosine, "cosine"}, {E::None, "none"}}};
};

}  // namespace frugal

namespace frugal::train {

// One entry of --batch-schedule "E:B,...": from epoch E on the global batch is B.
struct BatchStage {
  std::int64_t epoch = 0;
  std::int64_t global_batch = 0;
  friend bool operator==(const BatchStage&, const BatchStage&) = default;
};

struct ScheduleOptions {
  double base_lr = 0.1;
  std::int64_t ref_batch = 256;
  // Global batch of epoch 0 (and of every epoch when batch_stages is empty). The linear scaling
  // rule uses this batch: when the batch grows later, the LR does not grow with it, because a
  // larger batch at the same LR is what replaces LR decay (Smith et al. 2018).
  std::int64_t global_batch = 256;
  double warmup_epochs = 0;
  Decay decay = Decay::Step;
  std::vector<std::int64_t> lr_steps;  // epochs at which step decay multiplies by lr_gamma
  double lr_gamma = 0.1;
  std::int64_t epochs = 1;               // length of the cosine
  std::vector<BatchStage> batch_stages;  // sorted by epoch, strictly increasing
};

// Throws frugal::Error(InvalidArgument) naming the option on values out of range
// (base_lr <= 0, ref_batch/global_batch < 1, warmup_epochs < 0, unsorted stages...).
void validate(const ScheduleOptions& options);

// base_lr × global_batch / ref_batch (with the epoch-0 global batch).
double scaled_lr(const ScheduleOptions& options);

// The LR of iteration `step` (0-based) of epoch `epoch`, which has `steps_per_epoch` iterations.
// Let t = epoch + step / steps_per_epoch (fractional epochs). During warmup (t < warmup_epochs)
// the LR rises linearly per iteration from base_lr at t = 0 towards scaled_lr (Goyal et al.
// 2017). After it: step decay multiplies scaled_lr by lr_gamma for every milestone <= epoch;
// cosine is scaled_lr × (1 + cos(π (t − W) / (epochs − W))) / 2.
double learning_rate(const ScheduleOptions& options, std::int64_t epoch, std::int64_t step,
                     std::int64_t steps_per_epoch);

// The global batch of `epoch`: the last stage whose epoch <= `epoch`, else options.global_batch.
std::int64_t global_batch_at(const ScheduleOptions& options, std::int64_t epoch);

// The per-rank batch for a global batch over `ranks` ranks; throws InvalidArgument unless the
// division is exact (the global batch must stay exact).
std::int64_t local_batch(std::int64_t global_batch, int ranks);

// How a rank's batch of `local` examples is processed: the fewest micro-batches of at most
// `max_micro` (0 = no limit) examples each, sizes as equal as possible, larger ones first. The
// trainer weights micro-batch i's mean loss by sizes[i] / local, so the accumulated gradient is
// exactly the gradient of the mean loss over the whole batch.
std::vector<std::int64_t> micro_batches(std::int64_t local, std::int64_t max_micro);

// "30,60,80" -> {30, 60, 80}; throws InvalidArgument naming `option` on bad text.
std::vector<std::int64_t> parse_int_list(std::string_view text, std::string_view option);
// "0:256,30:1280" -> stages; throws InvalidArgument naming `option` on bad text or order.
std::vector<BatchStage> parse_batch_schedule(std::string_view text, std::string_view option);

}  // namespace frugal::train

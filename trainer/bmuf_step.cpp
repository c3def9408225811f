// --sync bmuf: a local step (forward, backward, the optimizer on this rank's own mean gradient,
// nothing sent), and the block boundary every --block-steps steps and at the end of an epoch,
// where frugal::Bmuf averages the block deltas and writes the next block's start into the
// parameters.
//
// The optimizer's momentum buffers are kept across block boundaries, each rank its own. Every
// operation of a local step is linear in (weights, velocity, gradient) with weights equal on
// every rank at the block's start, so with one-step blocks, η = 0 and ζ = 1 the mean of the
// ranks' models after the step is exactly the synchronous momentum-SGD step, whose velocity is
// the mean of the ranks' velocities: keeping them is what makes --block-steps 1 reproduce
// --sync sync. Chen & Huo's intra-block optimizer is momentum SGD too and is not reset at block
// boundaries in their description; their per-block analysis only counts a gradient's momentum
// tail within its block. A block discarded for a non-finite delta (every rank alike) clears the
// buffers, which may hold the NaN.
#include <string>

#include "training_run.hpp"

namespace frugal::train {

StepOutcome TrainingRun::bmuf_step(const EpochPlan& plan, const Batch& batch, double lr) {
  StepOutcome outcome;
  auto t = Clock::now();
  for (const Sgd::Param& p : sgd_.params()) p.value.mutable_grad() = torch::Tensor();
  forward_backward(plan, batch, 1, outcome);
  outcome.seconds.compute = since(t);

  t = Clock::now();
  sgd_.step(lr);
  outcome.seconds.optimizer = since(t);

  t = Clock::now();
  const std::uint64_t before = bmuf_->bytes_sent();
  if (bmuf_->step()) after_block(outcome, before);
  outcome.seconds.comm = since(t);
  ++global_step_;
  return outcome;
}

void TrainingRun::end_epoch_block(Tally& tally) {
  const auto t = Clock::now();
  StepOutcome outcome;
  const std::uint64_t before = bmuf_->bytes_sent();
  if (bmuf_->sync()) after_block(outcome, before);
  tally.blocks += outcome.blocks;
  tally.block_bytes += outcome.block_bytes;
  tally.seconds.comm += since(t);
}

void TrainingRun::after_block(StepOutcome& outcome, std::uint64_t bytes_before) {
  outcome.blocks = 1;
  outcome.block_bytes = bmuf_->bytes_sent() - bytes_before;
  if (bmuf_->last_block_skipped()) {
    for (torch::Tensor& v : sgd_.momentum()) v = torch::Tensor();
    reporter_.message("step " + std::to_string(global_step_ + 1) +
                      ": non-finite block delta; block discarded on every rank");
  }
}

}  // namespace frugal::train

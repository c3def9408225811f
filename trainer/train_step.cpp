// A step: forward and backward over the rank's micro-batches with the gradients allreduced from
// the hooks, then the optimizer's update, or nothing at all when the step is skipped.
#include <string>
#include <vector>

#include "dgc.hpp"
#include "models/resnet.hpp"
#include "training_run.hpp"

namespace frugal::train {

StepOutcome TrainingRun::train_step(const EpochPlan& plan, const Batch& batch, double lr) {
  const TrainOptions& o = options_;
  StepOutcome outcome;
  auto t = Clock::now();
  // A skipped step must leave nothing behind, and the gradient sync can only vouch for the
  // gradients and error feedback. The BN statistics are updated by forward (a NaN batch would
  // poison the running mean for good), and with momentum correction the hooks advance the
  // velocities before the step's fate is known: both are small, so keep a copy.
  std::vector<torch::Tensor> saved_buffers;
  if (!o.freeze_bn) {
    for (const torch::Tensor& buffer : buffers_) saved_buffers.push_back(buffer.clone());
  }
  std::vector<torch::Tensor> saved_velocity;
  if (o.sgd.momentum_correction) {
    for (const torch::Tensor& v : sgd_.momentum()) {
      saved_velocity.push_back(v.defined() ? v.clone() : torch::Tensor());
    }
  }
  if (shard_) {
    shard_->begin_step();
  } else {
    sync_->begin_step(plan.compressed);
  }
  forward_backward(plan, batch, ranks_, outcome);
  outcome.seconds.compute = since(t);
  straggle(outcome.seconds.compute);

  t = Clock::now();
  // --shard-optimizer: reduce-scatter, the shard's update and the allgather, all counted as comm.
  outcome.skipped = shard_ ? !shard_->step(lr, plan.compressed) : !sync_->end_step();
  outcome.seconds.comm = since(t);

  t = Clock::now();
  if (!outcome.skipped && !shard_) {
    sgd_.step(lr);
    if (o.momentum_masking && plan.compressed)
      mask_velocity(sgd_.momentum(), sync_->worker_residuals());
  } else if (outcome.skipped) {
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < saved_buffers.size(); ++k) buffers_[k].copy_(saved_buffers[k]);
    if (o.sgd.momentum_correction) sgd_.momentum() = std::move(saved_velocity);
    reporter_.message("step " + std::to_string(global_step_ + 1) +
                      ": non-finite gradient; step skipped on every rank");
  }
  outcome.seconds.optimizer = since(t);
  ++global_step_;
  return outcome;
}

void TrainingRun::forward_backward(const EpochPlan& plan, const Batch& batch, int divisor,
                                   StepOutcome& outcome) {
  std::int64_t offset = 0;
  for (std::size_t j = 0; j < plan.micro.size(); ++j) {
    const std::int64_t n = plan.micro[j];
    const torch::Tensor x = batch.images.narrow(0, offset, n);
    const torch::Tensor y = batch.labels.narrow(0, offset, n);
    offset += n;
    if (sync_) sync_->set_last_micro_batch(j + 1 == plan.micro.size());
    const torch::Tensor logits = forward(*model_, x);
    const torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits, y,
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(options_.label_smoothing));
    // Mean over the micro-batch × its share of the rank's batch ÷ divisor: summed over micro-
    // batches (and, with divisor = ranks, over ranks) this is the mean loss over the rank's
    // (the global) batch, so the gradient is that batch's mean gradient.
    (loss * (static_cast<double>(n) / static_cast<double>(plan.batch) / divisor)).backward();
    const double loss_value = loss.item<double>();
    if (j == 0) result_.step_losses.push_back(loss_value);
    const auto [top1, top5] = hits(logits.detach(), y);
    outcome.sums.add(loss_value * static_cast<double>(n), top1, top5, static_cast<double>(n));
  }
}

}  // namespace frugal::train

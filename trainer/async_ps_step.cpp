// --sync async-ps, a worker's step: forward and backward on its own batch, the push of its share
// of the global step's gradient to the parameter servers and the pull of the parameters its next
// step computes on (frugal::PsWorker; docs/parameter_server.md).
//
// The share: (g + λ·w) / W, with g the worker's mean gradient over its batch, w the weights it
// pulled and W the number of workers. The servers apply each push as one momentum-SGD update at
// the step's LR, so W pushes move the weights as one synchronous step of the global batch does
// (exactly so with one worker and s = 0, up to float rounding; with more, the momentum sees W
// smaller updates per round, whose steady-state step lr/(1 − μ) × the mean gradient is the same).
// Weight decay is added here, as Sgd adds it, so that the servers need no per-tensor options.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "training_run.hpp"

namespace frugal::train {

void TrainingRun::straggle(double compute_s) const {
  if (rank_ != options_.straggler_rank || options_.straggler_factor <= 1) return;
  std::this_thread::sleep_for(
      std::chrono::duration<double>((options_.straggler_factor - 1) * compute_s));
}

void TrainingRun::ps_to_model() {
  torch::NoGradGuard no_grad;
  std::size_t at = 0;
  for (const Sgd::Param& p : sgd_.params()) {
    const auto n = static_cast<std::size_t>(p.value.numel());
    std::copy_n(ps_params_.data() + at, n, p.value.data_ptr<float>());
    at += n;
  }
}

StepOutcome TrainingRun::async_ps_step(const EpochPlan& plan, const Batch& batch, double lr) {
  StepOutcome outcome;
  auto t = Clock::now();
  for (const Sgd::Param& p : sgd_.params()) p.value.mutable_grad() = torch::Tensor();
  forward_backward(plan, batch, 1, outcome);
  outcome.seconds.compute = since(t);
  straggle(outcome.seconds.compute);

  t = Clock::now();
  const double wd = options_.sgd.weight_decay;
  bool finite = true;
  {
    torch::NoGradGuard no_grad;
    std::size_t at = 0;
    for (const Sgd::Param& p : sgd_.params()) {
      const torch::Tensor& g = p.value.grad();
      torch::Tensor d = g.defined() ? g : torch::zeros_like(p.value);
      if (p.decay && wd != 0) d = d.add(p.value, wd);
      if (ranks_ > 1) d = d / static_cast<double>(ranks_);
      d = d.contiguous();
      const auto n = static_cast<std::size_t>(d.numel());
      std::copy_n(d.data_ptr<float>(), n, ps_grad_.data() + at);
      at += n;
    }
    finite =
        std::all_of(ps_grad_.begin(), ps_grad_.end(), [](float x) { return std::isfinite(x); });
  }
  if (!finite) {
    // Still a push, of nothing: every worker must keep the same number of steps, or the epoch's
    // end would wait for a step that never comes.
    std::fill(ps_grad_.begin(), ps_grad_.end(), 0.0f);
    outcome.skipped = true;
    reporter_.message("step " + std::to_string(global_step_ + 1) + " on rank " +
                      std::to_string(rank_) + ": non-finite gradient; pushed zeros instead");
  }
  outcome.seconds.optimizer = since(t);

  t = Clock::now();
  // The residuals hold gradient mass dropped at the previous step's LR (TrainingRun::follow_lr).
  if (ps_last_lr_ != 0 && lr != ps_last_lr_) {
    ps_->scale_residuals(static_cast<float>(ps_last_lr_ / lr));
  }
  ps_last_lr_ = lr;
  const WorkerStats before = ps_->stats();
  outcome.pushed = true;
  outcome.staleness = static_cast<std::int64_t>(before.pushes) - ps_->clock();
  ps_->push_pull(ps_grad_, lr);
  outcome.push_bytes = ps_->stats().bytes_pushed - before.bytes_pushed;
  outcome.pull_bytes = ps_->stats().bytes_pulled - before.bytes_pulled;
  ps_to_model();
  outcome.seconds.comm = since(t);
  ++global_step_;
  return outcome;
}

void TrainingRun::end_epoch_refresh() {
  ps_->refresh();
  ps_to_model();
}

void TrainingRun::ps_epoch_fields(const Tally& epoch, EpochSummary& summary, LogRecord& record) {
  // Sums over the workers (counts exact in a double below 2^53).
  std::array<double, 5> sums = {
      static_cast<double>(epoch.pushes), epoch.staleness_sum, static_cast<double>(epoch.push_bytes),
      static_cast<double>(epoch.pull_bytes), static_cast<double>(ps_->stats().pushes)};
  std::vector<std::int64_t> maxima(static_cast<std::size_t>(ranks_));
  if (ranks_ > 1) {
    allreduce(comm_, std::span<double>(sums));
    const std::int64_t mine = epoch.staleness_max;
    allgather(comm_, std::as_bytes(std::span(&mine, 1)),
              std::as_writable_bytes(std::span<std::int64_t>(maxima)));
  } else {
    maxima[0] = epoch.staleness_max;
  }
  const auto pushed_so_far = static_cast<std::uint64_t>(sums[4]);
  // After the refresh every push of every worker is in: the servers must have applied them all.
  if (ps_->servers_applied() != pushed_so_far) {
    throw Error(ErrorCode::Internal,
                "parameter server: the servers applied " + std::to_string(ps_->servers_applied()) +
                    " updates, the workers pushed " + std::to_string(pushed_so_far));
  }
  summary.pushes = static_cast<std::uint64_t>(sums[0]);
  summary.applied_updates = ps_->servers_applied();
  summary.staleness_max = *std::max_element(maxima.begin(), maxima.end());
  summary.staleness_mean = sums[0] > 0 ? sums[1] / sums[0] : 0.0;
  summary.push_bytes = static_cast<std::uint64_t>(sums[2]);
  summary.pull_bytes = static_cast<std::uint64_t>(sums[3]);
  record.pushes = summary.pushes;
  record.applied_updates = summary.applied_updates;
  record.staleness_max = summary.staleness_max;
  record.staleness_mean = summary.staleness_mean;
  record.push_bytes = summary.push_bytes;
  record.pull_bytes = summary.pull_bytes;
}

}  // namespace frugal::train

// An epoch: its plan (batch, micro-batches, steps), the loop over its steps with the "step" log
// records, and its end (BN statistics, validation, the "epoch" record).
#include <cmath>
#include <optional>
#include <string>
#include <utility>

#include "dgc.hpp"
#include "frugal/error.hpp"
#include "training_run.hpp"

namespace frugal::train {

namespace {

// splitmix64 of a combination: the loader seed of an epoch.
std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void set_frozen_bn(torch::nn::Module& model) {
  for (const auto& module : model.modules(false)) {
    if (module->as<torch::nn::BatchNorm2d>() != nullptr) module->eval();
  }
}

// The fields a "step" and an "epoch" record share.
LogRecord record_of(const char* kind, const EpochPlan& plan, std::int64_t step, double lr,
                    const Sums& global, const Tally& tally, std::uint64_t wire, const Bmuf* bmuf) {
  LogRecord r;
  r.kind = kind;
  r.epoch = plan.epoch;
  r.step = step;
  r.lr = lr;
  r.global_batch = plan.global_batch;
  r.train_loss = global.loss();
  r.train_top1 = global.top1();
  r.wire_bytes = wire;
  r.steps = tally.steps;
  r.wire_bytes_per_step = static_cast<double>(wire) / static_cast<double>(tally.steps);
  r.skipped_steps = tally.skipped;
  r.data_s = tally.seconds.data;
  r.compute_s = tally.seconds.compute;
  r.comm_wait_s = tally.seconds.comm;
  r.optimizer_s = tally.seconds.optimizer;
  if (bmuf != nullptr) {
    r.blocks = tally.blocks;
    r.block = static_cast<std::int64_t>(bmuf->blocks());
    r.block_bytes = tally.block_bytes;
  }
  return r;
}

}  // namespace

EpochPlan TrainingRun::plan_epoch(std::int64_t epoch) const {
  const TrainOptions& o = options_;
  EpochPlan plan;
  plan.epoch = epoch;
  plan.global_batch = global_batch_at(o.schedule, epoch);
  plan.batch = local_batch(plan.global_batch, ranks_);
  plan.micro = micro_batches(plan.batch, o.max_local_batch);
  const DistributedSampler sampler(train_.size(), rank_, ranks_, o.seed, true, o.limit_train);
  plan.steps = static_cast<std::int64_t>(sampler.per_rank()) / plan.batch;
  if (plan.steps < 1) {
    throw Error(ErrorCode::InvalidArgument,
                "--batch-size: the global batch " + std::to_string(plan.global_batch) +
                    " is larger than the training set (" +
                    std::to_string(sampler.per_rank() * static_cast<std::size_t>(ranks_)) +
                    " images after --limit-train)");
  }
  const bool compressing = o.sync.compression.method != compression::Method::None ||
                           o.sync.powersgd || o.sync.autotune.enabled;
  // Under --sync bmuf no gradient is exchanged, compressed or not (the block delta's compression
  // is Bmuf's).
  // Nor under --sync async-ps (the pushes' compression is the parameter server's).
  plan.compressed = compressing && epoch >= o.compress_after_epochs && !o.bmuf && !o.async_ps;
  return plan;
}

double TrainingRun::density_at(std::int64_t epoch) const {
  return warmup_density(options_.sync.compression.density, epoch - options_.compress_after_epochs,
                        options_.density_warmup_epochs);
}

Tally TrainingRun::train_epoch(const EpochPlan& plan) {
  const TrainOptions& o = options_;
  const std::int64_t epoch = plan.epoch;
  const std::int64_t epochs = o.schedule.epochs;
  const DistributedSampler sampler(train_.size(), rank_, ranks_, o.seed, true, o.limit_train);
  LoaderOptions lo;
  lo.batch_size = static_cast<std::size_t>(plan.batch);
  lo.threads = o.loader_threads;
  lo.drop_last = true;
  Loader loader(train_, sampler.indices(epoch), mix(o.seed, static_cast<std::uint64_t>(epoch)), lo);
  if (plan.compressed && epoch == o.compress_after_epochs && epoch > 0) {
    reporter_.message("epoch " + std::to_string(epoch + 1) + ": switching to compressed gradients");
  }
  if (plan.compressed && o.density_warmup_epochs > 0 && density_at(epoch) != sync_->density()) {
    sync_->set_density(density_at(epoch));
    reporter_.message("epoch " + std::to_string(epoch + 1) + ": top-k density " +
                      std::to_string(sync_->density()));
  }
  model_->train();
  if (o.freeze_bn) set_frozen_bn(*model_);

  Tally tally = start_tally(), window = start_tally();
  double running_loss = NAN;
  for (std::int64_t s = 0; s < plan.steps; ++s) {
    const auto t = Clock::now();
    std::optional<Batch> batch = loader.next();
    if (!batch) throw Error(ErrorCode::Internal, "loader ended before its batch count");
    const double data_s = since(t);

    const double lr = learning_rate(o.schedule, epoch, s, plan.steps);
    follow_lr(plan, s, lr);
    StepOutcome step = bmuf_ ? bmuf_step(plan, *batch, lr)
                       : ps_ ? async_ps_step(plan, *batch, lr)
                             : train_step(plan, *batch, lr);
    step.seconds.data = data_s;
    if (sync_) {
      for (const GuardrailEvent& e : sync_->take_guardrail_events()) {
        reporter_.guardrail({epoch, global_step_, e.bucket, e.from_rung, e.to_rung, e.from, e.to,
                             e.ratio, e.relative_error});
      }
      for (const AutotuneEvent& e : sync_->take_autotune_events()) {
        reporter_.autotune({epoch, global_step_, e.bucket, e.from, e.to, e.decision, e.costs});
      }
    }
    tally.add(step);
    window.add(step);
    const double step_loss = step.sums.loss();
    running_loss = std::isnan(running_loss) ? step_loss : 0.9 * running_loss + 0.1 * step_loss;

    const double elapsed = since(tally.start);
    const double per_step = elapsed / static_cast<double>(s + 1);
    const double eta =
        per_step * static_cast<double>((plan.steps - s - 1) + (epochs - epoch - 1) * plan.steps);
    reporter_.progress(epoch, epochs, s + 1, plan.steps, running_loss,
                       static_cast<double>(plan.global_batch * (s + 1)) / elapsed, eta);
    if (o.log_every > 0 && global_step_ % o.log_every == 0) log_window(plan, lr, window);
  }
  // Blocks do not cross epochs: validation and the checkpoint see the ranks' common model.
  if (bmuf_) end_epoch_block(tally);
  // Every worker ran the same steps: a refresh gives them all the same, complete model.
  if (ps_) {
    const auto t = Clock::now();
    end_epoch_refresh();
    tally.seconds.comm += since(t);
  }
  return tally;
}

double TrainingRun::previous_lr(const EpochPlan& plan, std::int64_t step) const {
  if (step > 0) return learning_rate(options_.schedule, plan.epoch, step - 1, plan.steps);
  const EpochPlan before = plan_epoch(plan.epoch - 1);
  return learning_rate(options_.schedule, before.epoch, before.steps - 1, before.steps);
}

void TrainingRun::follow_lr(const EpochPlan& plan, std::int64_t step, double lr) {
  // The residual is gradient mass the coming step applies at `lr`; it was dropped at the
  // previous step's LR. Under warmup (every step), step decay (×10 at a milestone) or cosine the
  // two differ. Derived from the schedule alone, not remembered, so a resumed run rescales
  // exactly as the uninterrupted one does.
  double factor = 1.0;
  if (plan.compressed && (step > 0 || plan.epoch > 0)) {
    factor = previous_lr(plan, step) / lr;
    const auto f = static_cast<float>(factor);
    if (factor != 1.0 && !(shard_ ? shard_->scale_residuals(f) : sync_->scale_residuals(f))) {
      factor = 1.0;
    }
  }
  result_.residual_scales.push_back(factor);
}

void TrainingRun::guardrail_fields(LogRecord& r) const {
  if (!sync_ || !options_.sync.guardrail.enabled) return;
  const auto [ratio, rung] = sync_->guardrail_status();
  r.guardrail_ratio = ratio;
  r.guardrail_rung = rung;
}

void TrainingRun::hierarchy_fields(LogRecord& r, const Tally& tally) const {
  const HostTopology* topology = sync_ ? sync_->topology() : nullptr;
  if (topology == nullptr) return;
  r.hierarchical_hosts = topology->host_count();
  r.hierarchical_ranks_per_host = topology->ranks_on_host();
  if (counter_ == nullptr) return;
  const std::uint64_t bytes = inter_host_bytes() - tally.inter_host_at_start;
  r.inter_host_bytes = bytes;
  r.inter_host_bytes_per_step = static_cast<double>(bytes) / static_cast<double>(tally.steps);
}

// Writes the window's "step" record and starts the next window.
void TrainingRun::log_window(const EpochPlan& plan, double lr, Tally& window) {
  // Under --sync async-ps the workers are at different steps: a collective here would be a
  // barrier, so a step record holds rank 0's own examples and pushes.
  const Sums sums = ps_ ? window.sums : window.sums.global(comm_);
  LogRecord r = record_of("step", plan, global_step_, lr, sums, window,
                          wire_bytes() - window.wire_at_start, bmuf_.get());
  if (ps_) {
    r.pushes = window.pushes;
    r.staleness_max = window.staleness_max;
    r.staleness_mean =
        window.pushes > 0 ? window.staleness_sum / static_cast<double>(window.pushes) : 0.0;
    r.push_bytes = window.push_bytes;
    r.pull_bytes = window.pull_bytes;
  }
  guardrail_fields(r);
  hierarchy_fields(r, window);
  r.elapsed_s = since(window.start);
  r.images_per_sec = static_cast<double>(plan.global_batch * window.steps) / r.elapsed_s;
  reporter_.step(r);
  window = start_tally();
}

EpochSummary TrainingRun::end_epoch(const EpochPlan& plan, const Tally& epoch) {
  const double train_seconds = since(epoch.start);
  const std::uint64_t wire = wire_bytes() - epoch.wire_at_start;
  // BN running statistics differ between ranks (each saw its own examples): use rank 0's, so
  // that validation and checkpoints see one model.
  if (!options_.freeze_bn) broadcast_from_rank0(buffers_);
  const Sums train_global = epoch.sums.global(comm_);
  const Sums val = validate(options_.val_batch > 0 ? options_.val_batch : plan.batch);

  EpochSummary summary;
  summary.epoch = plan.epoch;
  summary.train_loss = train_global.loss();
  summary.train_top1 = train_global.top1();
  summary.val_loss = val.loss();
  summary.val_top1 = val.top1();
  summary.val_top5 = val.top5();
  summary.seconds = train_seconds;
  summary.images_per_sec = static_cast<double>(plan.global_batch * plan.steps) / train_seconds;
  summary.wire_bytes = wire;
  summary.steps = plan.steps;
  summary.skipped_steps = epoch.skipped;
  summary.blocks = epoch.blocks;
  summary.block_bytes = epoch.block_bytes;

  const double last_lr = learning_rate(options_.schedule, plan.epoch, plan.steps - 1, plan.steps);
  LogRecord r =
      record_of("epoch", plan, global_step_, last_lr, train_global, epoch, wire, bmuf_.get());
  r.val_loss = summary.val_loss;
  r.val_top1 = summary.val_top1;
  r.val_top5 = summary.val_top5;
  r.images_per_sec = summary.images_per_sec;
  r.elapsed_s = train_seconds;
  r.optimizer_state_bytes = optimizer_state_bytes_;
  if (ps_) ps_epoch_fields(epoch, summary, r);
  guardrail_fields(r);
  hierarchy_fields(r, epoch);
  reporter_.epoch(r, options_.schedule.epochs);
  return summary;
}

}  // namespace frugal::train

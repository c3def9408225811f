#include "training_run.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>

#include "counting_transport.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "models/resnet.hpp"

namespace frugal::train {

const TrainOptions& checked_options(const TrainOptions& o, const Dataset& train,
                                    const Dataset& val) {
  validate(o.schedule);
  require(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing",
          "must be in [0, 1)");
  require(o.log_every >= 0, "--log-every", "must be >= 0");
  require(o.max_local_batch >= 0, "--max-local-batch", "must be >= 0");
  require(o.compress_after_epochs >= 0, "--compress-after-epochs", "must be >= 0");
  require(o.loader_threads >= 1, "--loader-threads", "must be at least 1");
  const bool topk = o.sync.compression.method == compression::Method::TopK;
  if (o.momentum_masking) {
    require(o.sgd.momentum_correction, "--momentum-masking", "needs --momentum-correction");
    require(topk, "--momentum-masking", "needs --compress topk");
    require(o.sync.error_feedback, "--momentum-masking", "needs --error-feedback on");
  }
  require(std::isfinite(o.clip_grad_norm) && o.clip_grad_norm >= 0, "--clip-grad-norm",
          "must be finite and >= 0");
  require(o.density_warmup_epochs >= 0, "--density-warmup-epochs", "must be >= 0");
  require(o.density_warmup_epochs == 0 || topk, "--density-warmup-epochs", "needs --compress topk");
  if (o.sync.powersgd) {
    // PowerSGD reduces every tensor itself: no per-rank velocity goes into it, no bucket
    // algorithm chooses its exchange, and BMUF's block delta has no PowerSGD state.
    require(!o.bmuf, "--compress", "powersgd needs --sync sync");
    require(!o.sgd.momentum_correction, "--momentum-correction",
            "does not apply to --compress powersgd");
    require(o.sync.algorithm == AllreduceAlgorithm::Auto, "--algorithm",
            "does not apply to --compress powersgd");
  }
  if (o.shard_optimizer) {
    // The optimizer state lives in shards of the flat parameters, updated after a reduce-scatter:
    // everything that keeps per-rank velocities, reduces otherwise or checkpoints Sgd's state
    // has no sharded form.
    const char* flag = "--shard-optimizer";
    require(!o.bmuf, flag, "does not combine with --sync bmuf (needs --sync sync)");
    require(!o.async_ps, flag, "does not combine with --sync async-ps (needs --sync sync)");
    require(!o.sgd.momentum_correction, flag, "does not combine with --momentum-correction");
    require(!o.momentum_masking, flag, "does not combine with --momentum-masking");
    require(o.clip_grad_norm == 0, flag, "does not combine with --clip-grad-norm");
    require(!o.sync.powersgd, flag, "does not combine with --compress powersgd");
    require(!topk, flag,
            "does not combine with --compress topk (the reduce-scatter runs the quantizers: fp16, "
            "bf16, onebit, ternary, qsgd, or none)");
    require(o.sync.algorithm == AllreduceAlgorithm::Auto ||
                o.sync.algorithm == AllreduceAlgorithm::TwoPhase,
            flag, "does not combine with --algorithm other than auto or two_phase");
    require(o.checkpoint_dir.empty() && !o.resume, flag,
            "does not combine with --checkpoint-dir or --resume (no sharded checkpoint yet)");
    require(!o.print_carried_update, flag, "does not combine with --print-carried-update");
    require(!o.sync.guardrail.enabled, flag,
            "does not combine with --guardrail (which watches the bucketed allreduce)");
  }
  if (o.sync.autotune.enabled) {
    // Auto tunes the bucketed allreduce of --sync sync, flat, with error feedback.
    const char* flag = "--compress auto";
    require(!o.bmuf, flag, "does not combine with --sync bmuf");
    require(!o.async_ps, flag, "does not combine with --sync async-ps");
    require(!o.shard_optimizer, flag, "does not combine with --shard-optimizer");
    require(!o.sync.hierarchical, flag, "does not combine with --hierarchical");
    require(!o.sync.powersgd, flag, "does not combine with --compress powersgd");
    require(o.sync.compression.method == compression::Method::None, flag,
            "chooses the method itself");
    require(o.sync.algorithm == AllreduceAlgorithm::Auto, flag,
            "does not combine with --algorithm (each candidate runs its own auto choice)");
    require(o.sync.error_feedback, flag, "needs --error-feedback on");
    require(o.density_warmup_epochs == 0, flag, "does not combine with --density-warmup-epochs");
    require(!o.momentum_masking, flag, "does not combine with --momentum-masking");
  }
  if (o.sync.hierarchical) {
    const char* flag = "--hierarchical";
    require(!o.bmuf, flag, "does not combine with --sync bmuf");
    require(!o.async_ps, flag, "does not combine with --sync async-ps");
    require(!o.shard_optimizer, flag, "does not combine with --shard-optimizer");
    require(!o.momentum_masking, flag, "does not combine with --momentum-masking");
    require(o.density_warmup_epochs == 0, flag, "does not combine with --density-warmup-epochs");
  }
  if (o.bmuf) {
    require(o.block_steps >= 1, "--block-steps", "must be >= 1");
    require(o.block_momentum >= 0 && o.block_momentum < 1, "--block-momentum", "must be in [0, 1)");
    require(std::isfinite(o.block_lr) && o.block_lr > 0, "--block-lr", "must be finite and > 0");
    // Each of these reshapes the per-step gradient exchange, which --sync bmuf does not have.
    require(!o.sgd.momentum_correction, "--momentum-correction", "needs --sync sync");
    require(!o.momentum_masking, "--momentum-masking", "needs --sync sync");
    require(o.clip_grad_norm == 0, "--clip-grad-norm", "needs --sync sync");
    require(o.density_warmup_epochs == 0, "--density-warmup-epochs", "needs --sync sync");
    require(o.compress_after_epochs == 0, "--compress-after-epochs", "needs --sync sync");
  } else {
    require(o.block_steps == 1 && o.block_momentum == 0 && o.block_lr == 1 && !o.nesterov_bmuf,
            "--block-steps",
            "--block-steps, --block-momentum, --block-lr and --nesterov-bmuf "
            "need --sync bmuf");
  }
  if (o.async_ps) {
    require(!o.bmuf, "--sync", "async-ps and bmuf exclude each other");
    require(o.servers >= 1, "--servers", "must be >= 1");
    require(o.staleness >= 0, "--staleness", "must be >= 0 (or inf)");
    require(!o.sync.powersgd, "--compress", "powersgd needs --sync sync");
    // Each of these reshapes the per-step allreduce, which --sync async-ps does not have.
    require(!o.sgd.momentum_correction, "--momentum-correction", "needs --sync sync");
    require(!o.momentum_masking, "--momentum-masking", "needs --sync sync");
    require(o.clip_grad_norm == 0, "--clip-grad-norm", "needs --sync sync");
    require(o.density_warmup_epochs == 0, "--density-warmup-epochs", "needs --sync sync");
    require(o.compress_after_epochs == 0, "--compress-after-epochs", "needs --sync sync");
    // The momentum lives on the servers and the residuals on the workers: no checkpoint of
    // --sync async-ps holds both yet.
    require(o.checkpoint_dir.empty() && !o.resume, "--checkpoint-dir",
            "--checkpoint-dir and --resume are not supported with --sync async-ps");
    require(!o.print_carried_update, "--print-carried-update", "needs --sync sync");
  } else {
    require(o.servers == 1 && o.staleness == 0, "--servers",
            "--servers and --staleness need --sync async-ps");
  }
  require(o.straggler_rank >= -1, "--straggler", "the rank must be >= 0");
  require(std::isfinite(o.straggler_factor) && o.straggler_factor >= 1, "--straggler",
          "the factor must be finite and >= 1");
  require(val.channels() == train.channels() && val.num_classes() == train.num_classes(), "--data",
          "training and validation sets differ in channels or classes");
  return o;
}

ParameterServerOptions ps_options(const TrainOptions& o) {
  ParameterServerOptions p;
  p.servers = o.servers;
  p.staleness = o.staleness;
  p.momentum = o.sgd.momentum;
  p.nesterov = o.sgd.nesterov;
  p.compression = o.sync.compression;
  p.error_feedback = o.sync.error_feedback;
  p.seed = o.seed;
  // A dead worker stops the run: the workers validate together at every epoch's end, which a
  // dead worker would fail anyway (WorkerFailurePolicy::Continue is the library's).
  p.on_worker_failure = WorkerFailurePolicy::Stop;
  return p;
}

namespace {

// DGC's local clipping bounds each rank's gradient (the mean over its batch) by C/√N; the sync
// sees the rank's share of the global mean, that gradient / N, hence C/(N·√N).
SyncOptions sync_options(const TrainOptions& o, int ranks) {
  SyncOptions sync = o.sync;
  const double n = ranks;
  sync.clip_norm = o.clip_grad_norm / (n * std::sqrt(n));
  return sync;
}

std::shared_ptr<torch::nn::Module> seeded_model(const TrainOptions& o, const Dataset& train) {
  torch::manual_seed(o.seed);
  return make_model({o.model, train.channels(), train.num_classes(), o.zero_init_residual});
}

std::vector<torch::Tensor> buffers_of(torch::nn::Module& model) {
  std::vector<torch::Tensor> buffers;
  for (const auto& item : model.named_buffers()) buffers.push_back(item.value());
  return buffers;
}

std::vector<Sgd::Param> sgd_params(torch::nn::Module& model, bool no_wd_bn_bias) {
  std::vector<Sgd::Param> params;
  for (const auto& item : model.named_parameters()) {
    params.push_back({item.key(), item.value(), !(no_wd_bn_bias && item.value().dim() <= 1)});
  }
  return params;
}

// In the optimizer's order: the momentum-correction hook passes an index into both.
std::vector<std::pair<std::string, torch::Tensor>> sync_params(const Sgd& sgd) {
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const Sgd::Param& p : sgd.params()) params.emplace_back(p.name, p.value);
  return params;
}

// The filter over every parameter, in the optimizer's order; the delta's allreduce is the
// compressed one of --compress, seeded like the gradient sync's.
std::vector<float> flat_parameters(const Sgd& sgd) {
  std::vector<float> flat;
  for (const Sgd::Param& p : sgd.params()) {
    require(p.value.is_contiguous() && p.value.scalar_type() == torch::kFloat32, "params",
            p.name + " is not a contiguous float32 tensor");
    const float* data = p.value.data_ptr<float>();
    flat.insert(flat.end(), data, data + p.value.numel());
  }
  return flat;
}

std::unique_ptr<Bmuf> make_bmuf(Communicator& comm, const Sgd& sgd, const TrainOptions& o) {
  std::vector<BmufTensor> tensors;
  for (const Sgd::Param& p : sgd.params()) {
    require(p.value.is_contiguous() && p.value.scalar_type() == torch::kFloat32, "params",
            p.name + " is not a contiguous float32 tensor");
    tensors.push_back(
        {p.name, {p.value.data_ptr<float>(), static_cast<std::size_t>(p.value.numel())}});
  }
  BmufOptions b;
  b.block_steps = o.block_steps;
  b.block_momentum = o.block_momentum;
  b.block_lr = o.block_lr;
  b.nesterov = o.nesterov_bmuf;
  b.allreduce.compression = o.sync.compression;
  b.allreduce.error_feedback = o.sync.error_feedback;
  b.allreduce.algorithm = o.sync.algorithm;
  b.allreduce.seed = o.seed;
  b.allreduce.non_finite = NonFiniteAction::Skip;  // as the gradient sync: skip, never poison
  return std::make_unique<Bmuf>(comm, std::move(tensors), std::move(b));
}

std::span<std::byte> bytes_of(torch::Tensor& t) {
  require(t.is_contiguous(), "tensor", "not contiguous");
  return {static_cast<std::byte*>(t.data_ptr()), t.nbytes()};
}

}  // namespace

std::size_t parameter_count(const TrainOptions& options, const Dataset& train) {
  std::size_t n = 0;
  for (const auto& p : seeded_model(options, train)->parameters()) {
    n += static_cast<std::size_t>(p.numel());
  }
  return n;
}

Timers& Timers::operator+=(const Timers& other) {
  data += other.data;
  compute += other.compute;
  comm += other.comm;
  optimizer += other.optimizer;
  return *this;
}

void Tally::add(const StepOutcome& step) {
  sums += step.sums;
  seconds += step.seconds;
  ++steps;
  if (step.skipped) ++skipped;
  blocks += step.blocks;
  block_bytes += step.block_bytes;
  if (step.pushed) {
    ++pushes;
    staleness_sum += static_cast<double>(step.staleness);
    staleness_max = std::max(staleness_max, step.staleness);
    push_bytes += step.push_bytes;
    pull_bytes += step.pull_bytes;
  }
}

TrainingRun::TrainingRun(Communicator& comm, Communicator* ps_comm,
                         const CountingTransport* counter, const Dataset& train, const Dataset& val,
                         const TrainOptions& options, std::ostream& out)
    : comm_(comm),
      counter_(counter),
      train_(train),
      val_(val),
      options_(checked_options(options, train, val)),
      rank_(comm.rank()),
      ranks_(comm.size()),
      latest_(prepare_checkpoint_dir(options)),
      reporter_(rank_ == 0, out, options.progress_bar, options.log_path, latest_.has_value()),
      model_(seeded_model(options, train)),
      buffers_(buffers_of(*model_)),
      sgd_(sgd_params(*model_, options.no_wd_bn_bias), options.sgd),
      sync_(options.bmuf || options.async_ps || options.shard_optimizer
                ? nullptr
                : std::make_unique<GradientSync>(
                      comm, sync_params(sgd_), sync_options(options, comm.size()), options.seed,
                      options.sgd.momentum_correction
                          ? PrepareGradient([this](std::size_t i, torch::Tensor& share) {
                              sgd_.accumulate_local(i, share, ranks_);
                            })
                          : PrepareGradient())) {
  std::vector<torch::Tensor> state;
  for (const Sgd::Param& p : sgd_.params()) state.push_back(p.value);
  state.insert(state.end(), buffers_.begin(), buffers_.end());
  broadcast_from_rank0(state);
  if (options.bmuf) bmuf_ = make_bmuf(comm, sgd_, options);
  if (options.shard_optimizer) {
    shard_ = std::make_unique<ShardedOptimizer>(comm, sgd_, options.sync, options.seed);
  }
  std::size_t params = 0;
  for (const Sgd::Param& p : sgd_.params()) params += static_cast<std::size_t>(p.value.numel());
  optimizer_state_bytes_ =
      optimizer_state_bytes(options.sgd, params, options.shard_optimizer, ranks_, rank_);
  if (options.async_ps) {
    require(ps_comm != nullptr, "ps_comm", "--sync async-ps needs the communicator of every rank");
    ps_params_ = flat_parameters(sgd_);
    ps_grad_.resize(ps_params_.size());
    ps_ = std::make_unique<PsWorker>(*ps_comm, ps_params_, ps_options(options));
    ps_to_model();
  }
  resume();
}

RunResult TrainingRun::run() && {
  for (std::int64_t epoch = start_epoch_; epoch < options_.schedule.epochs; ++epoch) {
    const EpochPlan plan = plan_epoch(epoch);
    const Tally tally = train_epoch(plan);
    result_.epochs.push_back(end_epoch(plan, tally));
    if (!options_.checkpoint_dir.empty()) save_checkpoint(epoch + 1);
  }
  // Every server checks that it applied each of this worker's pushes, no more, no fewer.
  if (ps_) ps_->finish();
  result_.model = model_;
  return std::move(result_);
}

std::uint64_t TrainingRun::wire_bytes() const noexcept {
  return counter_ != nullptr ? counter_->bytes_sent() : 0;
}

std::uint64_t TrainingRun::inter_host_bytes() const noexcept {
  return counter_ != nullptr ? counter_->cross_host_bytes_sent() : 0;
}

void TrainingRun::broadcast_from_rank0(const std::vector<torch::Tensor>& tensors) {
  if (ranks_ == 1) return;
  torch::NoGradGuard no_grad;
  for (torch::Tensor t : tensors) broadcast(comm_, bytes_of(t), 0);
}

}  // namespace frugal::train

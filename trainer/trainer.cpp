#include "trainer.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "checkpoint.hpp"
#include "counting_transport.hpp"
#include "fault_injection.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"
#include "gradient_sync.hpp"
#include "models/resnet.hpp"
#include "report.hpp"

namespace frugal::train {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// splitmix64 of a combination: the loader seed of an epoch.
std::uint64_t mix(std::uint64_t a, std::uint64_t b) {
  std::uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::span<std::byte> bytes_of(torch::Tensor& t) {
  require(t.is_contiguous(), "tensor", "not contiguous");
  return {static_cast<std::byte*>(t.data_ptr()), t.nbytes()};
}

// Every rank starts from rank 0's parameters and buffers (and keeps rank 0's BN statistics).
void broadcast_from_rank0(Communicator& comm, const std::vector<torch::Tensor>& tensors) {
  if (comm.size() == 1) return;
  torch::NoGradGuard no_grad;
  for (torch::Tensor t : tensors) broadcast(comm, bytes_of(t), 0);
}

void set_frozen_bn(torch::nn::Module& model) {
  for (const auto& module : model.modules(false)) {
    if (module->as<torch::nn::BatchNorm2d>() != nullptr) module->eval();
  }
}

// Sums of a window of examples: loss, top-1 and top-5 hits, count; summed over ranks with a
// dense allreduce.
struct Sums {
  std::array<double, 4> v{};
  void add(double loss_sum, double top1, double top5, double n) {
    v[0] += loss_sum;
    v[1] += top1;
    v[2] += top5;
    v[3] += n;
  }
  Sums global(Communicator& comm) const {
    Sums out = *this;
    if (comm.size() > 1) allreduce(comm, std::span<double>(out.v));
    return out;
  }
  double loss() const { return v[3] > 0 ? v[0] / v[3] : NAN; }
  double top1() const { return v[3] > 0 ? v[1] / v[3] : NAN; }
  double top5() const { return v[3] > 0 ? v[2] / v[3] : NAN; }
};

// Hits in the top 1 and top min(5, classes) of `logits` for `labels`.
std::pair<double, double> hits(const torch::Tensor& logits, const torch::Tensor& labels) {
  const std::int64_t k = std::min<std::int64_t>(5, logits.size(1));
  const torch::Tensor top = std::get<1>(logits.topk(k, 1));
  const torch::Tensor match = top.eq(labels.unsqueeze(1));
  return {match.select(1, 0).sum().item<double>(), match.any(1).sum().item<double>()};
}

struct Timers {
  double data = 0, compute = 0, comm = 0, optimizer = 0;
};

Sums validate_model(Communicator& comm, torch::nn::Module& model, const Dataset& val,
                    const TrainOptions& o, std::int64_t batch, int loader_threads) {
  model.eval();
  torch::NoGradGuard no_grad;
  DistributedSampler sampler(val.size(), comm.rank(), comm.size(), o.seed, false, o.limit_val);
  LoaderOptions lo;
  lo.batch_size = static_cast<std::size_t>(batch);
  lo.threads = loader_threads;
  lo.drop_last = false;
  Loader loader(val, sampler.indices(0), o.seed, lo);
  Sums sums;
  while (auto b = loader.next()) {
    const torch::Tensor logits = forward(model, b->images);
    const double loss = torch::nn::functional::cross_entropy(
                            logits, b->labels,
                            torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                            .item<double>();
    const auto [top1, top5] = hits(logits, b->labels);
    sums.add(loss, top1, top5, static_cast<double>(b->labels.size(0)));
  }
  return sums.global(comm);
}

}  // namespace

RunResult run_training(Communicator& comm, const CountingTransport* counter, const Dataset& train,
                       const Dataset& val, const TrainOptions& o, std::ostream& out) {
  validate(o.schedule);
  require(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing",
          "must be in [0, 1)");
  require(o.log_every >= 0, "--log-every", "must be >= 0");
  require(o.max_local_batch >= 0, "--max-local-batch", "must be >= 0");
  require(o.compress_after_epochs >= 0, "--compress-after-epochs", "must be >= 0");
  require(o.loader_threads >= 1, "--loader-threads", "must be at least 1");
  require(val.channels() == train.channels() && val.num_classes() == train.num_classes(), "--data",
          "training and validation sets differ in channels or classes");
  const int rank = comm.rank();
  const int ranks = comm.size();
  const std::filesystem::path dir = o.checkpoint_dir;

  torch::manual_seed(o.seed);
  RunResult result;
  result.model = make_model({o.model, train.channels(), train.num_classes(), o.zero_init_residual});
  torch::nn::Module& model = *result.model;

  std::vector<Sgd::Param> sgd_params;
  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> state;  // parameters then buffers, for broadcasts
  for (const auto& item : model.named_parameters()) {
    const bool decay = !(o.no_wd_bn_bias && item.value().dim() <= 1);
    sgd_params.push_back({item.key(), item.value(), decay});
    named.emplace_back(item.key(), item.value());
    state.push_back(item.value());
  }
  std::vector<torch::Tensor> buffers;
  for (const auto& item : model.named_buffers()) buffers.push_back(item.value());
  state.insert(state.end(), buffers.begin(), buffers.end());
  Sgd sgd(std::move(sgd_params), o.sgd);
  PrepareGradient prepare;
  if (o.sgd.momentum_correction) {
    // `named` and the optimizer's parameters come from the same loop: same indices.
    prepare = [&sgd, ranks](std::size_t i, torch::Tensor& share) {
      sgd.accumulate_local(i, share, ranks);
    };
  }
  GradientSync sync(comm, named, o.sync, o.seed, std::move(prepare));

  broadcast_from_rank0(comm, state);

  const CheckpointMeta expected{0, 0, o.seed, ranks, o.model, o.sgd.momentum_correction};
  std::int64_t start_epoch = 0;
  std::int64_t global_step = 0;
  std::optional<std::int64_t> latest;
  if (!o.checkpoint_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      throw Error(ErrorCode::InvalidArgument,
                  "--checkpoint-dir: cannot create '" + dir.string() + "': " + ec.message());
    }
    check_fault_injection();
    if (o.resume) latest = latest_checkpoint(dir);
  } else {
    require(!o.resume, "--resume", "needs --checkpoint-dir");
  }
  Reporter reporter(rank == 0, out, o.progress_bar, o.log_path, latest.has_value());
  if (latest) {
    std::vector<std::byte> ef;
    const CheckpointMeta meta =
        load_checkpoint(checkpoint_path(dir, *latest, rank), expected, model, sgd, ef);
    sync.restore_state(ef);
    start_epoch = meta.epochs_done;
    global_step = meta.step;
    reporter.message("resumed from " + checkpoint_path(dir, *latest, rank).string() + " (epoch " +
                     std::to_string(start_epoch) + ", step " + std::to_string(global_step) + ")");
  } else if (o.resume) {
    reporter.message("--resume: no checkpoint in " + dir.string() + ", starting afresh");
  }

  const std::int64_t epochs = o.schedule.epochs;
  const bool compressing = o.sync.compression.method != compression::Method::None;
  for (std::int64_t epoch = start_epoch; epoch < epochs; ++epoch) {
    const std::int64_t global_batch = global_batch_at(o.schedule, epoch);
    const std::int64_t batch = local_batch(global_batch, ranks);
    const std::vector<std::int64_t> micro = micro_batches(batch, o.max_local_batch);
    DistributedSampler sampler(train.size(), rank, ranks, o.seed, true, o.limit_train);
    std::vector<std::size_t> indices = sampler.indices(epoch);
    const auto steps = static_cast<std::int64_t>(indices.size()) / batch;
    if (steps < 1) {
      throw Error(ErrorCode::InvalidArgument,
                  "--batch-size: the global batch " + std::to_string(global_batch) +
                      " is larger than the training set (" +
                      std::to_string(indices.size() * static_cast<std::size_t>(ranks)) +
                      " images after --limit-train)");
    }
    LoaderOptions lo;
    lo.batch_size = static_cast<std::size_t>(batch);
    lo.threads = o.loader_threads;
    lo.drop_last = true;
    Loader loader(train, std::move(indices), mix(o.seed, static_cast<std::uint64_t>(epoch)), lo);
    const bool compressed = compressing && epoch >= o.compress_after_epochs;
    if (compressing && epoch == o.compress_after_epochs && epoch > 0) {
      reporter.message("epoch " + std::to_string(epoch + 1) +
                       ": switching to compressed gradients");
    }
    model.train();
    if (o.freeze_bn) set_frozen_bn(model);

    Sums epoch_sums, window_sums;
    Timers epoch_t, window_t;
    std::int64_t epoch_skipped = 0, window_skipped = 0, window_steps = 0;
    const std::uint64_t wire_at_epoch = counter ? counter->bytes_sent() : 0;
    std::uint64_t wire_at_window = wire_at_epoch;
    const auto epoch_start = Clock::now();
    auto window_start = epoch_start;
    double running_loss = NAN;
    double lr = 0;
    for (std::int64_t s = 0; s < steps; ++s) {
      auto t = Clock::now();
      std::optional<Batch> b = loader.next();
      if (!b) throw Error(ErrorCode::Internal, "loader ended before its batch count");
      const double data_s = since(t);

      t = Clock::now();
      lr = learning_rate(o.schedule, epoch, s, steps);
      // A skipped step must not leave its BN statistics behind either (a NaN batch would poison
      // the running mean for good); they are small, so keep a copy.
      std::vector<torch::Tensor> saved_buffers;
      if (!o.freeze_bn) {
        for (const torch::Tensor& buffer : buffers) saved_buffers.push_back(buffer.clone());
      }
      // With momentum correction the hooks advance the velocities before the step can fail.
      std::vector<torch::Tensor> saved_velocity;
      if (o.sgd.momentum_correction) {
        for (const torch::Tensor& v : sgd.momentum()) {
          saved_velocity.push_back(v.defined() ? v.clone() : torch::Tensor());
        }
      }
      sync.begin_step(compressed);
      std::int64_t offset = 0;
      Sums step_sums;
      for (std::size_t j = 0; j < micro.size(); ++j) {
        const std::int64_t n = micro[j];
        const torch::Tensor x = b->images.narrow(0, offset, n);
        const torch::Tensor y = b->labels.narrow(0, offset, n);
        offset += n;
        sync.set_last_micro_batch(j + 1 == micro.size());
        const torch::Tensor logits = forward(model, x);
        const torch::Tensor loss = torch::nn::functional::cross_entropy(
            logits, y,
            torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing));
        // Mean over the micro-batch × its share of the rank's batch ÷ ranks: summed over micro-
        // batches and ranks this is the mean loss over the global batch, so the summed
        // gradient is the global batch's mean gradient.
        (loss * (static_cast<double>(n) / static_cast<double>(batch) / ranks)).backward();
        const double loss_value = loss.item<double>();
        if (j == 0) result.step_losses.push_back(loss_value);
        const auto [top1, top5] = hits(logits.detach(), y);
        step_sums.add(loss_value * static_cast<double>(n), top1, top5, static_cast<double>(n));
      }
      const double compute_s = since(t);

      t = Clock::now();
      const bool ok = sync.end_step();
      const double comm_s = since(t);

      t = Clock::now();
      if (ok) {
        sgd.step(lr);
      } else {
        torch::NoGradGuard no_grad;
        for (std::size_t k = 0; k < saved_buffers.size(); ++k) buffers[k].copy_(saved_buffers[k]);
        if (o.sgd.momentum_correction) sgd.momentum() = std::move(saved_velocity);
        ++epoch_skipped;
        ++window_skipped;
        reporter.message("step " + std::to_string(global_step + 1) +
                         ": non-finite gradient; step skipped on every rank");
      }
      const double optimizer_s = since(t);
      ++global_step;
      ++window_steps;
      for (Timers* timers : {&epoch_t, &window_t}) {
        timers->data += data_s;
        timers->compute += compute_s;
        timers->comm += comm_s;
        timers->optimizer += optimizer_s;
      }
      for (std::size_t k = 0; k < 4; ++k) {
        epoch_sums.v[k] += step_sums.v[k];
        window_sums.v[k] += step_sums.v[k];
      }
      const double step_loss = step_sums.loss();
      running_loss = std::isnan(running_loss) ? step_loss : 0.9 * running_loss + 0.1 * step_loss;

      const double elapsed = since(epoch_start);
      const double per_step = elapsed / static_cast<double>(s + 1);
      const double eta =
          per_step * static_cast<double>((steps - s - 1) + (epochs - epoch - 1) * steps);
      reporter.progress(epoch, epochs, s + 1, steps, running_loss,
                        static_cast<double>(global_batch * (s + 1)) / elapsed, eta);

      if (o.log_every > 0 && global_step % o.log_every == 0) {
        const Sums g = window_sums.global(comm);
        LogRecord r;
        r.kind = "step";
        r.epoch = epoch;
        r.step = global_step;
        r.lr = lr;
        r.global_batch = global_batch;
        r.train_loss = g.loss();
        r.train_top1 = g.top1();
        r.elapsed_s = since(window_start);
        r.images_per_sec = static_cast<double>(global_batch * window_steps) / r.elapsed_s;
        r.wire_bytes = counter ? counter->bytes_sent() - wire_at_window : 0;
        r.steps = window_steps;
        r.wire_bytes_per_step =
            static_cast<double>(r.wire_bytes) / static_cast<double>(window_steps);
        r.skipped_steps = window_skipped;
        r.data_s = window_t.data;
        r.compute_s = window_t.compute;
        r.comm_wait_s = window_t.comm;
        r.optimizer_s = window_t.optimizer;
        reporter.step(r);
        window_sums = {};
        window_t = {};
        window_steps = 0;
        window_skipped = 0;
        window_start = Clock::now();
        wire_at_window = counter ? counter->bytes_sent() : 0;
      }
    }
    const double train_seconds = since(epoch_start);
    const std::uint64_t wire = counter ? counter->bytes_sent() - wire_at_epoch : 0;

    // BN running statistics differ between ranks (each saw its own examples): use rank 0's, so
    // that validation and checkpoints see one model.
    if (!o.freeze_bn) broadcast_from_rank0(comm, buffers);
    const Sums train_global = epoch_sums.global(comm);
    const Sums val_sums = validate_model(comm, model, val, o, o.val_batch > 0 ? o.val_batch : batch,
                                         o.loader_threads);

    EpochSummary summary;
    summary.epoch = epoch;
    summary.train_loss = train_global.loss();
    summary.train_top1 = train_global.top1();
    summary.val_loss = val_sums.loss();
    summary.val_top1 = val_sums.top1();
    summary.val_top5 = val_sums.top5();
    summary.seconds = train_seconds;
    summary.images_per_sec = static_cast<double>(global_batch * steps) / train_seconds;
    summary.wire_bytes = wire;
    summary.steps = steps;
    summary.skipped_steps = epoch_skipped;
    result.epochs.push_back(summary);

    LogRecord r;
    r.kind = "epoch";
    r.epoch = epoch;
    r.step = global_step;
    r.lr = lr;
    r.global_batch = global_batch;
    r.train_loss = summary.train_loss;
    r.train_top1 = summary.train_top1;
    r.val_loss = summary.val_loss;
    r.val_top1 = summary.val_top1;
    r.val_top5 = summary.val_top5;
    r.images_per_sec = summary.images_per_sec;
    r.wire_bytes = wire;
    r.steps = steps;
    r.wire_bytes_per_step = static_cast<double>(wire) / static_cast<double>(steps);
    r.skipped_steps = epoch_skipped;
    r.data_s = epoch_t.data;
    r.compute_s = epoch_t.compute;
    r.comm_wait_s = epoch_t.comm;
    r.optimizer_s = epoch_t.optimizer;
    r.elapsed_s = train_seconds;
    reporter.epoch(r, epochs);

    if (!o.checkpoint_dir.empty()) {
      const CheckpointMeta meta{epoch + 1, global_step, o.seed,
                                ranks,     o.model,     o.sgd.momentum_correction};
      save_checkpoint(checkpoint_path(dir, epoch + 1, rank), meta, model, sgd, sync.save_state());
      // Commit only once every rank's file is durable; remove older files only after it.
      barrier(comm);
      inject_fault_at("checkpoint-commit");
      if (rank == 0) commit_checkpoint(dir, epoch + 1);
      barrier(comm);
      remove_old_checkpoints(dir, epoch + 1, rank);
    }
  }
  return result;
}

}  // namespace frugal::train

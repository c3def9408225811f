#pragma once

// The training loop of frugal-train: synchronous data-parallel SGD over a frugal Communicator,
// gradients fused in buckets and allreduced (dense or compressed) from autograd hooks while
// backward still runs, the LR and batch from schedule.hpp, distributed validation, checkpoints;
// or, with --sync bmuf, local SGD in blocks joined by frugal::Bmuf (bmuf_step.cpp); or, with
// --sync async-ps, workers pushing to and pulling from a sharded parameter server
// (async_ps_step.cpp, async_ps_server.cpp).

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "data/dataset.hpp"
#include "frugal/collectives/parameter_server.hpp"
#include "frugal/communicator.hpp"
#include "gradient_sync.hpp"
#include "schedule.hpp"
#include "sgd.hpp"

namespace frugal::train {

class CountingTransport;

struct TrainOptions {
  std::string model = "resnet20";
  bool zero_init_residual = true;  // ModelSpec::zero_init_residual
  // BN layers use their running statistics (initially mean 0, variance 1) in training too, so
  // that a rank's output does not depend on which other examples share its batch (the 2-rank
  // equivalence test); γ and β still train.
  bool freeze_bn = false;

  ScheduleOptions schedule;          // epochs, global batch, LR recipe, batch growth
  std::int64_t max_local_batch = 0;  // micro-batch cap per rank (0: none)
  std::int64_t val_batch = 0;        // per rank (0: the epoch's local batch)

  SgdOptions sgd;
  bool no_wd_bn_bias = false;  // no weight decay on BN γ/β and biases (every 1-D parameter)
  double label_smoothing = 0;

  SyncOptions sync;  // compression (method None: dense), buckets, ...
  // --sync bmuf (docs/trainer.md, "BMUF and local SGD"): each rank takes block_steps local SGD
  // steps on its own batches without communicating, then frugal::Bmuf averages the ranks' block
  // deltas (compressed as `sync` says, with its error feedback) and applies block momentum η and
  // block LR ζ. The last block of an epoch ends with the epoch. Off: synchronous SGD.
  bool bmuf = false;
  std::size_t block_steps = 1;  // H
  double block_momentum = 0;    // η
  double block_lr = 1;          // ζ
  bool nesterov_bmuf = false;   // Nesterov block momentum
  // --sync async-ps (docs/parameter_server.md): the last `servers` ranks are parameter servers
  // (frugal::PsServer) and the others workers that push their gradients (compressed as `sync`
  // says, with error feedback kept per shard on the worker) and pull the parameters with no
  // barrier, at most `staleness` steps ahead of the slowest worker; the servers apply momentum
  // SGD with the workers' LR. Epochs end with every worker at the same step and the same model.
  bool async_ps = false;
  int servers = 1;
  std::int64_t staleness = 0;  // kUnboundedStaleness: no bound
  // --straggler RANK:FACTOR (any --sync): rank `straggler_rank` sleeps after each step's
  // forward and backward for (FACTOR − 1) times their duration, so that its compute takes FACTOR
  // times as long. -1: nobody.
  int straggler_rank = -1;
  double straggler_factor = 1;
  // --shard-optimizer (--sync sync; sharded_optimizer.hpp): each rank keeps momentum for its
  // 1/P shard of the flat parameters; the gradient is reduce-scattered (compressed per
  // --compress, or dense), each rank updates its shard, the parameters are allgathered densely.
  bool shard_optimizer = false;
  std::int64_t compress_after_epochs = 0;  // dense before this epoch
  // The rest of DGC around momentum correction (trainer/dgc.hpp), each off by default:
  // velocity entries the top-k step sent are zeroed (momentum factor masking; needs momentum
  // correction, top-k and error feedback) ...
  bool momentum_masking = false;
  // ... each rank's gradient is clipped to L2 norm clip_grad_norm / sqrt(ranks) before it enters
  // the velocity (0: off) ...
  double clip_grad_norm = 0;
  // ... and top-k's density ramps exponentially to its target over this many epochs from the
  // first compressed one (0: the target from the start; needs top-k).
  std::int64_t density_warmup_epochs = 0;

  std::uint64_t seed = 0;
  int loader_threads = 2;
  std::size_t limit_train = 0;
  std::size_t limit_val = 0;

  std::string log_path;        // JSON lines (rank 0); empty: none
  std::int64_t log_every = 0;  // also a "step" record every N steps (0: epochs only)
  std::string checkpoint_dir;  // empty: no checkpoints
  bool resume = false;         // continue from checkpoint_dir's latest checkpoint
  // Diagnostic: after each checkpoint and after a resume, rank 0 prints the update the
  // error-feedback residuals carry (GradientSync::carried_update summed over ranks), what an
  // elastic resume must preserve. Costs one scalar allreduce each time.
  bool print_carried_update = false;
  bool progress_bar = false;  // rank 0 draws a bar (main sets it when stdout is a terminal)
};

struct EpochSummary {
  std::int64_t epoch = 0;
  double train_loss = 0, train_top1 = 0;
  double val_loss = 0, val_top1 = 0, val_top5 = 0;
  double seconds = 0, images_per_sec = 0;
  std::uint64_t wire_bytes = 0;
  std::int64_t steps = 0, skipped_steps = 0;
  std::int64_t blocks = 0;        // --sync bmuf: block boundaries in the epoch
  std::uint64_t block_bytes = 0;  // --sync bmuf: bytes the block-delta allreduces sent
  // --sync async-ps, over every worker in the epoch: gradients pushed, the updates the servers
  // had applied by the epoch's end (since the run's start; every push so far), the staleness of
  // the pushes (steps), and the bytes pushed and pulled.
  std::uint64_t pushes = 0, applied_updates = 0;
  std::int64_t staleness_max = 0;
  double staleness_mean = 0;
  std::uint64_t push_bytes = 0, pull_bytes = 0;
};

struct RunResult {
  std::vector<EpochSummary> epochs;  // the epochs this call ran (not the resumed ones)
  // The loss of the first micro-batch of every step this call ran, this rank's examples only
  // (what the resume test compares).
  std::vector<double> step_losses;
  // The factor every step this call ran scaled the error-feedback residuals by before it ran:
  // lr of the previous step / lr of this step for a compressed step, else 1.
  std::vector<double> residual_scales;
  std::shared_ptr<torch::nn::Module> model;  // final weights (workers)
  std::optional<ServerReport> server;        // --sync async-ps: a server rank's account
};

// Runs the whole training on `comm` (every rank calls it with the same options). `counter`, if
// given, is the communicator's transport and provides wire bytes. `out` gets rank 0's progress.
// Throws frugal::Error: InvalidArgument for bad options or data, and whatever the collectives
// throw (Timeout, PeerFailure, ...) when a peer fails; the last good checkpoint is kept then.
// Under --sync async-ps the last options.servers ranks serve (RunResult::server) and the others
// train on a communicator of their own.
RunResult run_training(Communicator& comm, const CountingTransport* counter, const Dataset& train,
                       const Dataset& val, const TrainOptions& options, std::ostream& out);

}  // namespace frugal::train

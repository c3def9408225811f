// frugal-train: data-parallel training of a ResNet with frugal's (compressed) allreduce,
// synchronous or in BMUF blocks (--sync bmuf). Run it under `mpirun -np P` or `scripts/launch -np
// P`; --help lists every option.

#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <thread>

#include "compression_cli.hpp"
#include "counting_transport.hpp"
#include "data/dataset.hpp"
#include "frugal/bootstrap.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/enum_names.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#include "frugal/tcp_store.hpp"
#include "models/resnet.hpp"
#include "schedule.hpp"
#include "sharded_optimizer.hpp"
#include "trainer.hpp"
#include "training_run.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx.hpp"
#endif

namespace po = boost::program_options;
using namespace frugal;
using namespace frugal::train;

namespace {

constexpr int kUsageError = 2;
constexpr int kRunFailed = 3;
constexpr unsigned kHelpWidth = 100;

struct Cli {
  TrainOptions train;
  std::string data = "fashion-mnist";
  std::string transport = "auto";
  std::string compress = "none";
  std::string sync = "sync";
  std::string algorithm = "auto";
  std::string decay = "cosine";
  std::string lr_steps;
  std::string batch_schedule;
  double bucket_mb = 25;
  int threads = 0;
  int image_size = 224;
  bool skip_corrupt = false;
  bool no_progress = false;
  double timeout_s = 0;
  std::string staleness = "0";
  std::string straggler;
  std::string guardrail_bounds;
  std::string auto_candidates = "dense,fp16,ternary";
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "frugal-train: " << message << "\n(see frugal-train --help)\n";
  std::exit(kUsageError);
}

// The gradient exchange in words, for the banner: what a reader of a log needs to repeat it.
std::string describe_sync(const Cli& c) {
  using compression::Method;
  const compression::CompressionConfig& k = c.train.sync.compression;
  std::string out;
  if (c.train.async_ps) {
    out = "asynchronous parameter server: " + std::to_string(c.train.servers) +
          " server rank(s), staleness " +
          (c.train.staleness == kUnboundedStaleness ? std::string("unbounded")
                                                    : std::to_string(c.train.staleness)) +
          ", pushes ";
  }
  if (c.train.bmuf) {
    out = "BMUF: blocks of " + std::to_string(c.train.block_steps) +
          " local steps, block momentum " + std::to_string(c.train.block_momentum) +
          (c.train.nesterov_bmuf ? " (Nesterov)" : "") + ", block LR " +
          std::to_string(c.train.block_lr) + ", block delta ";
  }
  if (c.train.sync.autotune.enabled) {
    const AutotuneOptions& a = c.train.sync.autotune;
    char margin[48];
    std::snprintf(margin, sizeof margin, ", margin %g", a.margin);
    out += "compression auto (candidates " + c.auto_candidates + "; " + std::to_string(a.warmup) +
           " warm-up steps, trials of " + std::to_string(a.trial_steps) + " steps per candidate, " +
           (a.retune == 0 ? std::string("no retrial")
                          : "retrial " + std::to_string(a.retune) + " steps after each") +
           margin + ")";
  } else {
    out += "compression " + std::string(enum_name(k.method));
  }
  const auto bucket = [&](std::size_t fallback) {
    return std::to_string(k.bucket != 0 ? k.bucket : fallback);
  };
  switch (k.method) {
    case Method::TopK:
      out += " (density " + std::to_string(k.density);
      if (k.selection != compression::TopKSelection::Exact) {
        out += ", " + std::string(enum_name(k.selection)) + " selection";
      }
      if (k.topk_scope != compression::TopKScope::Global) out += ", per tensor";
      if (k.gtopk) out += ", gTop-k";
      out += ")";
      break;
    case Method::OneBit:
      out += " (chunk " + bucket(compression::kDefaultOneBitChunk) + ", " +
             std::string(enum_name(k.scaling)) + ")";
      break;
    case Method::Ternary:
      out += " (bucket " + bucket(compression::kDefaultTernaryBucket) + ")";
      break;
    case Method::Qsgd:
      out += " (" + std::to_string(k.bits) + " bits, bucket " +
             bucket(compression::kDefaultQsgdBucket) + ", " + std::string(enum_name(k.norm)) +
             " norm)";
      break;
    default:
      break;
  }
  if (c.train.sync.powersgd) {
    const PowerSgdOptions& p = c.train.sync.powersgd_options;
    out = "compression powersgd (rank " + std::to_string(p.rank) + ", min compression rate " +
          std::to_string(p.min_compression_rate) + ", exact for the first " +
          std::to_string(p.start_iter) + " steps, after backward)";
  }
  if (k.method != Method::None || c.train.sync.powersgd || c.train.sync.autotune.enabled) {
    out += c.train.sync.error_feedback ? ", error feedback" : ", no error feedback";
    if (c.train.sync.dense_vectors && !c.train.bmuf && !c.train.async_ps &&
        !c.train.sync.powersgd && !c.train.shard_optimizer) {
      out += ", 1-D parameters dense";
    }
    if (c.algorithm != "auto") out += ", " + c.algorithm;
    if (c.train.compress_after_epochs > 0) {
      out += " after " + std::to_string(c.train.compress_after_epochs) + " dense epochs";
    }
  }
  if (c.train.sync.guardrail.enabled) {
    char bounds[96];
    std::snprintf(bounds, sizeof bounds, ", guardrail %g..%g (patience %zu)",
                  c.train.sync.guardrail.lower, c.train.sync.guardrail.upper,
                  c.train.sync.guardrail.patience);
    out += bounds;
  }
  if (c.train.shard_optimizer) {
    out = "sharded optimizer: gradient reduce-scatter with " + out + ", dense parameter allgather";
  }
  if (c.train.sgd.momentum_correction) out += ", momentum correction";
  if (c.train.momentum_masking) out += ", momentum masking";
  if (c.train.clip_grad_norm > 0)
    out += ", local clipping " + std::to_string(c.train.clip_grad_norm);
  if (c.train.density_warmup_epochs > 0) {
    out += ", density warm-up " + std::to_string(c.train.density_warmup_epochs) + " epochs";
  }
  if (const std::optional<HostTopology>& t = c.train.sync.topology;
      c.train.sync.hierarchical && t) {
    out += "; hierarchical: " + std::to_string(t->host_count()) + " hosts x " +
           std::to_string(t->ranks_on_host()) + " ranks";
  }
  if (c.train.straggler_rank >= 0) {
    out += "; rank " + std::to_string(c.train.straggler_rank) + " straggles (compute × " +
           std::to_string(c.train.straggler_factor) + ")";
  }
  return out;
}

int local_ranks() {
  for (const char* name :
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "FRUGAL_LOCAL_WORLD_SIZE", "FRUGAL_WORLD_SIZE"}) {
    if (const char* v = std::getenv(name)) {
      const int n = std::atoi(v);
      if (n > 0) return n;
    }
  }
  return 1;
}

Cli parse(int argc, char** argv) {
  Cli c;
  TrainOptions& t = c.train;
  ScheduleOptions& s = t.schedule;
  std::int64_t batch = s.global_batch;
  bool no_zero_residual = false;
  bool dense_vectors = false, no_dense_vectors = false;
  bool momentum_correction = false, no_momentum_correction = false;
  po::options_description general("General", kHelpWidth, kHelpWidth / 2);
  general.add_options()("help,h", "print this help and exit")(
      "data", po::value(&c.data)->default_value(c.data),
      "dataset: fashion-mnist (IDX files of the Debian package dataset-fashion-mnist), "
      "idx:DIR (MNIST-format files in DIR) or imagefolder:DIR (DIR/train/<class>/*.JPEG, "
      "DIR/val/<class>/*)")(
      "image-size", po::value(&c.image_size)->default_value(c.image_size),
      "side of the images cut from an image folder (IDX data keeps its own size)")(
      "skip-corrupt", po::bool_switch(&c.skip_corrupt),
      "skip undecodable images of an image folder with a warning instead of stopping")(
      "limit-train", po::value(&t.limit_train)->default_value(0),
      "use only the first N training images (0: all)")(
      "limit-val", po::value(&t.limit_val)->default_value(0),
      "use only the first N validation images (0: all)")(
      "model", po::value(&t.model)->default_value(t.model),
      "resnet20, resnet32, resnet56 (CIFAR-style, for small images) or resnet18, resnet34, "
      "resnet50 (ImageNet-style)")(
      "no-zero-init-residual", po::bool_switch(&no_zero_residual),
      "start each residual block's last batch-norm γ at 1 (torchvision's default) instead of 0 "
      "(Goyal et al.: every block starts as the identity)")(
      "freeze-bn", po::bool_switch(&t.freeze_bn),
      "batch norm uses its running statistics in training too (γ and β still train)")(
      "seed", po::value(&t.seed)->default_value(0),
      "seed of weight initialisation, shuffling, augmentation and stochastic compression");
  po::options_description recipe("Training recipe", kHelpWidth, kHelpWidth / 2);
  recipe.add_options()("epochs", po::value(&s.epochs)->default_value(30), "epochs to train")(
      "batch-size", po::value(&batch)->default_value(batch),
      "global batch (all ranks together); must be a multiple of the number of ranks")(
      "batch-schedule", po::value(&c.batch_schedule),
      "growing batch: EPOCH:BATCH,... sets the global batch from each EPOCH on (e.g. "
      "0:256,30:1280,60:6400), instead of decaying the LR (Smith et al.); the LR keeps the "
      "value the linear scaling rule gives for the first batch")(
      "max-local-batch", po::value(&t.max_local_batch)->default_value(0),
      "largest batch a rank runs at once; larger per-rank batches are split into micro-batches "
      "whose gradients are accumulated, so the global batch stays exact (0: no limit)")(
      "val-batch", po::value(&t.val_batch)->default_value(0),
      "per-rank validation batch (0: the training per-rank batch)")(
      "base-lr", po::value(&s.base_lr)->default_value(s.base_lr), "LR for --ref-batch images")(
      "ref-batch", po::value(&s.ref_batch)->default_value(s.ref_batch),
      "linear scaling rule: lr = base-lr × global batch / ref-batch")(
      "warmup-epochs", po::value(&s.warmup_epochs)->default_value(0),
      "gradual warmup: the LR rises per iteration from base-lr to the scaled LR over this many "
      "(possibly fractional) epochs")(
      "lr-decay", po::value(&c.decay)->default_value(c.decay),
      "after warmup: step (× lr-gamma at each of --lr-steps), cosine (to 0 at --epochs) or none")(
      "lr-steps", po::value(&c.lr_steps), "epochs of the step decay, e.g. 30,60,80")(
      "lr-gamma", po::value(&s.lr_gamma)->default_value(s.lr_gamma), "step decay factor")(
      "momentum", po::value(&t.sgd.momentum)->default_value(t.sgd.momentum), "SGD momentum")(
      "nesterov", po::bool_switch(&t.sgd.nesterov), "Nesterov momentum")(
      "weight-decay", po::value(&t.sgd.weight_decay)->default_value(5e-4, "5e-4"),
      "L2 weight decay")("no-wd-bn-bias", po::bool_switch(&t.no_wd_bn_bias),
                         "no weight decay on batch-norm γ/β and biases")(
      "label-smoothing", po::value(&t.label_smoothing)->default_value(0),
      "label smoothing of the cross-entropy loss, in [0, 1)");
  po::options_description comm("Communication", kHelpWidth, kHelpWidth / 2);
  comm.add_options()(
      "transport", po::value(&c.transport)->default_value(c.transport),
      "mpi (Open MPI point-to-point), ucx (frugal's UCX transport) or auto: ucx with the "
      "TCP-store bootstrap when FRUGAL_RANK is set (scripts/launch), else mpi")(
      "compress", po::value(&c.compress)->default_value(c.compress),
      "gradient compression: none, fp16, bf16, topk, onebit, ternary, qsgd (with --sync bmuf: "
      "of the block delta, with the same error feedback), powersgd (rank-r approximations "
      "reduced after backward, Vogels et al. 2019; --sync sync only) or auto (each compressed "
      "bucket tries the --auto-candidates online and keeps the fastest, the same on every "
      "rank; --sync sync only; docs/trainer.md, \"Compression = auto\")")(
      "auto-candidates", po::value(&c.auto_candidates)->value_name("LIST"),
      "--compress auto: the methods to choose from, densest first, each with its parameters' "
      "flags (e.g. --density for topk); ties go to the earlier (default dense,fp16,ternary: "
      "the ones measured within 0.5 points of dense)")(
      "auto-warmup",
      po::value(&t.sync.autotune.warmup)->value_name("N")->default_value(t.sync.autotune.warmup),
      "--compress auto: compressed steps on the first candidate before the first trial")(
      "auto-trial-steps",
      po::value(&t.sync.autotune.trial_steps)
          ->value_name("T")
          ->default_value(t.sync.autotune.trial_steps),
      "--compress auto: steps each candidate runs in a trial (its cost: the median over them)")(
      "auto-retune",
      po::value(&t.sync.autotune.retune)->value_name("R")->default_value(t.sync.autotune.retune),
      "--compress auto: steps from the end of a trial to the next (0: one trial only)")(
      "auto-margin",
      po::value(&t.sync.autotune.margin)->value_name("X")->default_value(t.sync.autotune.margin),
      "--compress auto: a bucket keeps the densest candidate whose cost is within (1 + X) of "
      "the lowest (X >= 0)")(
      "powersgd-rank",
      po::value(&t.sync.powersgd_options.rank)
          ->value_name("R")
          ->default_value(t.sync.powersgd_options.rank),
      "--compress powersgd: rank R >= 1 of each gradient matrix's approximation (the paper: "
      "1 to 4)")(
      "powersgd-min-compression-rate",
      po::value(&t.sync.powersgd_options.min_compression_rate)
          ->value_name("X")
          ->default_value(t.sync.powersgd_options.min_compression_rate),
      "--compress powersgd: a tensor is compressed only if its dense size is more than X times "
      "its two factors; the others, every 1-D one included, are reduced exactly (X >= 1)")(
      "powersgd-start-iter",
      po::value(&t.sync.powersgd_options.start_iter)
          ->value_name("N")
          ->default_value(t.sync.powersgd_options.start_iter),
      "--compress powersgd: the first N compressed steps are reduced exactly (0: compress "
      "from the first)")(
      "sync", po::value(&c.sync)->default_value(c.sync),
      "sync: allreduce the gradients every step; bmuf: local SGD in blocks of --block-steps "
      "steps, then average the ranks' block deltas with block momentum (BMUF, Chen & Huo 2016; "
      "--block-momentum 0 --block-lr 1 is model averaging); async-ps: the last --servers ranks "
      "hold the parameters in shards and apply momentum SGD, the other ranks push gradients "
      "(compressed as --compress says, error feedback on the worker) and pull parameters "
      "without a barrier, within --staleness steps of the slowest (docs/parameter_server.md)")(
      "servers", po::value(&t.servers)->value_name("S")->default_value(t.servers),
      "--sync async-ps: the last S ranks are parameter servers, each holding a contiguous "
      "shard; the other ranks train (at least one)")(
      "staleness", po::value(&c.staleness)->value_name("s")->default_value(c.staleness),
      "--sync async-ps: a worker more than s steps ahead of the slowest live worker waits; 0 "
      "is synchronous, inf unbounded")(
      "shard-optimizer", po::bool_switch(&t.shard_optimizer),
      "each rank keeps the momentum of its 1/P shard of the parameters only (ZeRO-1): the "
      "gradient is reduce-scattered (compressed per --compress: a quantizer or none), each rank "
      "updates its shard, the parameters are allgathered densely (--sync sync only)")(
      "straggler", po::value(&c.straggler)->value_name("RANK:FACTOR"),
      "rank RANK sleeps after each step's forward and backward so that they take FACTOR (>= 1) "
      "times as long: a slow worker for comparing --sync modes")(
      "block-steps", po::value(&t.block_steps)->value_name("H")->default_value(t.block_steps),
      "--sync bmuf: local steps per block (an epoch's last block ends with the epoch)")(
      "block-momentum",
      po::value(&t.block_momentum)->value_name("ETA")->default_value(t.block_momentum),
      "--sync bmuf: block momentum ETA in [0, 1): Δ = ETA·Δ + ZETA·(mean block delta)")(
      "block-lr", po::value(&t.block_lr)->value_name("ZETA")->default_value(t.block_lr),
      "--sync bmuf: block learning rate ZETA > 0 (Chen & Huo: ZETA/(1 − ETA) about the number of "
      "ranks)")("nesterov-bmuf", po::bool_switch(&t.nesterov_bmuf),
                "--sync bmuf: Nesterov block momentum, each block starts from W + ETA·Δ")(
      "algorithm", po::value(&c.algorithm)->default_value(c.algorithm),
      "compressed allreduce: auto (allgather for quantizers at 2 ranks, two_phase beyond), "
      "two_phase or allgather (quantizers; allgather compresses once instead of twice, same "
      "bytes at 2 ranks, more beyond), sparse_allgather or sparse_rd (topk)")(
      "dense-vectors", po::bool_switch(&dense_vectors),
      "compressed steps send 1-D parameters (biases, batch-norm γ/β, ~1% of a ResNet) "
      "uncompressed, in dense buckets of their own (the default)")(
      "no-dense-vectors", po::bool_switch(&no_dense_vectors),
      "compress the 1-D parameters with the rest")(
      "momentum-correction", po::bool_switch(&momentum_correction),
      "each rank keeps the momentum of its own gradient and the allreduce carries these "
      "velocities (DGC's momentum correction): the same training with a dense allreduce, far "
      "less loss with compression. The default for --compress onebit and topk with error "
      "feedback, --momentum > 0 and --sync sync (docs/trainer.md, \"Defaults and why\")")(
      "no-momentum-correction", po::bool_switch(&no_momentum_correction),
      "compress the gradient itself and apply momentum after the allreduce")(
      "momentum-masking", po::bool_switch(&t.momentum_masking),
      "after each top-k step, zero the velocity entries that were sent, so that momentum "
      "already applied does not push them again (DGC's momentum factor masking; needs "
      "--momentum-correction and --compress topk)")(
      "clip-grad-norm", po::value(&t.clip_grad_norm)->value_name("C")->default_value(0),
      "clip each rank's gradient to L2 norm C/sqrt(ranks) before it enters the momentum "
      "(DGC's local gradient clipping; 0: off). Sends the gradients after backward, without "
      "overlap")(
      "density-warmup-epochs",
      po::value(&t.density_warmup_epochs)->value_name("E")->default_value(0),
      "ramp top-k's density exponentially from near dense to --density over the first E "
      "compressed epochs (DGC's sparsity warm-up: E 4 with --density 0.001 gives 75%, 93.75%, "
      "98.4%, 99.6% sparsity; 0: off)")("compress-after-epochs",
                                        po::value(&t.compress_after_epochs)->default_value(0),
                                        "train dense for this many epochs, then compress")(
      "bucket-mb", po::value(&c.bucket_mb)->default_value(c.bucket_mb),
      "gradients are fused into buckets of about this many MiB, each allreduced as soon as "
      "backward has produced it")(
      "hierarchical", po::bool_switch(&t.sync.hierarchical),
      "reduce each bucket hierarchically: dense reduce-scatter among the ranks of a host, the "
      "rank's share --compress'ed between hosts (error feedback per share), dense allgather "
      "within the host; the buckets are reduced after backward, without overlap. Hosts come "
      "from FRUGAL_HOST_ID (else hostname and network namespace) and must hold equal numbers of "
      "ranks (docs/hierarchical.md)")(
      "guardrail", po::bool_switch(&t.sync.guardrail.enabled),
      "accuracy guardrail: each compressed bucket tracks ||residual|| / ||gradient|| (an EMA "
      "over steps, agreed over the ranks), steps to a denser setting when it passes the upper "
      "bound (top-k density x4 up to 0.25, QSGD bits up, 1-bit/ternary/QSGD 8 -> fp16, then "
      "dense) and back one rung after --guardrail-patience steps below the lower bound; every "
      "change is a \"guardrail\" record in --log (docs/trainer.md, \"Accuracy guardrail\")")(
      "guardrail-bounds", po::value(&c.guardrail_bounds)->value_name("LO,HI"),
      "the guardrail's lower and upper bounds on the smoothed residual ratio (default 2,8)")(
      "guardrail-patience",
      po::value(&t.sync.guardrail.patience)->value_name("N")->default_value(200),
      "steps a bucket's ratio must stay below the lower bound before it steps back down")(
      "timeout", po::value(&c.timeout_s)->default_value(0),
      "seconds a wait for a peer may take before the run fails (0: FRUGAL_TIMEOUT or 60)");
  // Shared with frugal-bench: one spelling, default and check per flag.
  po::options_description parameters("Compression parameters", kHelpWidth, kHelpWidth / 2);
  compression::cli::add_compression_options(parameters);
  po::options_description renamed;
  compression::cli::add_renamed_compression_options(renamed);
  po::options_description misc("Runtime and output", kHelpWidth, kHelpWidth / 2);
  misc.add_options()("threads", po::value(&c.threads)->default_value(0),
                     "torch intra-op threads per rank (0: cores / ranks on this host, at least 1)")(
      "loader-threads", po::value(&t.loader_threads)->default_value(t.loader_threads),
      "data loading threads per rank")("log", po::value(&t.log_path),
                                       "write JSON lines to FILE (rank 0): one per epoch and one "
                                       "every --log-every steps")(
      "log-every", po::value(&t.log_every)->default_value(0),
      "steps between step records (0: none)")(
      "checkpoint-dir", po::value(&t.checkpoint_dir),
      "write a checkpoint here after every epoch (atomically; the previous one is kept until "
      "the new one is complete)")(
      "resume", po::bool_switch(&t.resume),
      "continue from the latest checkpoint in --checkpoint-dir (same seed and model; another "
      "number of ranks redistributes the error-feedback state, see docs/trainer.md)")(
      "print-carried-update", po::bool_switch(&t.print_carried_update),
      "diagnostic: after each checkpoint and resume, print the sum of the update the "
      "error-feedback residuals carry, over all ranks and elements")(
      "no-progress", po::bool_switch(&c.no_progress), "plain progress lines even on a terminal");
  po::options_description all(
      "Usage: mpirun -np P frugal-train [options]   or   scripts/launch -np P frugal-train "
      "[options]\n\nData-parallel training of a ResNet with frugal's dense or "
      "compressed allreduce, synchronous, in BMUF blocks (--sync bmuf) or asynchronous with a "
      "sharded parameter server (--sync async-ps).\nExit status: 0 done, 2 "
      "bad option or data, 3 the run failed "
      "(peer failure, timeout); checkpoints stay valid",
      kHelpWidth, kHelpWidth / 2);
  all.add(general).add(recipe).add(comm).add(parameters).add(misc);
  po::options_description accepted;
  accepted.add(all).add(renamed);
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, accepted), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    usage_error(e.what());
  }
  if (vm.count("help") != 0) {
    std::cout << all << '\n';
    std::exit(0);
  }
  s.global_batch = batch;
  t.zero_init_residual = !no_zero_residual;
  if (dense_vectors && no_dense_vectors) {
    usage_error("--dense-vectors and --no-dense-vectors contradict each other");
  }
  t.sync.dense_vectors = !no_dense_vectors;
  // Whether the command line names `flag` (not just its default).
  const auto given = [&](const char* flag) { return vm.count(flag) != 0 && !vm[flag].defaulted(); };
  if (c.sync == "async-ps") {
    t.async_ps = true;
    // These shape the per-step allreduce or a checkpoint, which --sync async-ps does not have.
    const std::pair<const char*, bool> not_ps[] = {
        {"momentum-correction", momentum_correction},
        {"no-momentum-correction", no_momentum_correction},
        {"momentum-masking", t.momentum_masking},
        {"dense-vectors", dense_vectors},
        {"no-dense-vectors", no_dense_vectors},
        {"clip-grad-norm", given("clip-grad-norm")},
        {"density-warmup-epochs", given("density-warmup-epochs")},
        {"compress-after-epochs", given("compress-after-epochs")},
        {"bucket-mb", given("bucket-mb")},
        {"algorithm", given("algorithm")},
        {"checkpoint-dir", given("checkpoint-dir")},
        {"resume", t.resume},
        {"print-carried-update", t.print_carried_update}};
    for (const auto& [flag, set] : not_ps) {
      if (set) usage_error(std::string("--") + flag + " does not apply to --sync async-ps");
    }
    for (const char* flag : {"block-steps", "block-momentum", "block-lr"}) {
      if (given(flag)) usage_error(std::string("--") + flag + " needs --sync bmuf");
    }
    if (t.nesterov_bmuf) usage_error("--nesterov-bmuf needs --sync bmuf");
    if (c.compress == "powersgd") usage_error("--compress powersgd needs --sync sync");
    if (t.servers < 1) usage_error("--servers: must be >= 1");
    if (c.staleness == "inf") {
      t.staleness = kUnboundedStaleness;
    } else {
      try {
        std::size_t used = 0;
        t.staleness = std::stoll(c.staleness, &used);
        if (used != c.staleness.size()) throw std::invalid_argument(c.staleness);
      } catch (const std::exception&) {
        usage_error("--staleness: expected a number of steps or inf, got '" + c.staleness + "'");
      }
      if (t.staleness < 0) usage_error("--staleness: must be >= 0 (or inf)");
    }
  } else {
    for (const char* flag : {"servers", "staleness"}) {
      if (given(flag)) usage_error(std::string("--") + flag + " needs --sync async-ps");
    }
  }
  if (!c.straggler.empty()) {
    const std::size_t colon = c.straggler.find(':');
    try {
      if (colon == std::string::npos) throw std::invalid_argument(c.straggler);
      std::size_t used = 0;
      t.straggler_rank = std::stoi(c.straggler.substr(0, colon), &used);
      if (used != colon) throw std::invalid_argument(c.straggler);
      const std::string factor = c.straggler.substr(colon + 1);
      t.straggler_factor = std::stod(factor, &used);
      if (used != factor.size()) throw std::invalid_argument(c.straggler);
    } catch (const std::exception&) {
      usage_error("--straggler: expected RANK:FACTOR (e.g. 1:2), got '" + c.straggler + "'");
    }
    if (t.straggler_rank < 0) usage_error("--straggler: the rank must be >= 0");
    if (!(std::isfinite(t.straggler_factor) && t.straggler_factor >= 1)) {
      usage_error("--straggler: the factor must be finite and >= 1");
    }
  }
  if (t.async_ps) {
    // Handled above.
  } else if (c.sync == "bmuf") {
    t.bmuf = true;
    // These shape the per-step gradient exchange, which --sync bmuf does not have.
    const std::pair<const char*, bool> per_step[] = {
        {"momentum-correction", momentum_correction},
        {"no-momentum-correction", no_momentum_correction},
        {"momentum-masking", t.momentum_masking},
        {"dense-vectors", dense_vectors},
        {"no-dense-vectors", no_dense_vectors},
        {"clip-grad-norm", given("clip-grad-norm")},
        {"density-warmup-epochs", given("density-warmup-epochs")},
        {"compress-after-epochs", given("compress-after-epochs")},
        {"bucket-mb", given("bucket-mb")}};
    for (const auto& [flag, set] : per_step) {
      if (set) usage_error(std::string("--") + flag + " applies to --sync sync, not bmuf");
    }
    if (t.block_steps < 1) usage_error("--block-steps: must be >= 1");
    if (!(t.block_momentum >= 0 && t.block_momentum < 1)) {
      usage_error("--block-momentum: must be in [0, 1)");
    }
    if (!(std::isfinite(t.block_lr) && t.block_lr > 0)) {
      usage_error("--block-lr: must be finite and > 0");
    }
  } else if (c.sync == "sync") {
    for (const char* flag : {"block-steps", "block-momentum", "block-lr"}) {
      if (!vm[flag].defaulted()) usage_error(std::string("--") + flag + " needs --sync bmuf");
    }
    if (t.nesterov_bmuf) usage_error("--nesterov-bmuf needs --sync bmuf");
  } else {
    usage_error("--sync: expected sync, bmuf or async-ps, got '" + c.sync + "'");
  }
  if (const auto decay = parse_enum<Decay>(c.decay)) {
    s.decay = *decay;
  } else {
    usage_error("--lr-decay: unknown decay '" + c.decay + "' (" + enum_choices<Decay>() + ")");
  }
  const bool powersgd = c.compress == "powersgd";
  t.sync.powersgd = powersgd;
  if (!powersgd) {
    for (const char* flag :
         {"powersgd-rank", "powersgd-min-compression-rate", "powersgd-start-iter"}) {
      if (given(flag)) {
        usage_error(std::string("--") + flag + " applies to --compress powersgd, not " +
                    c.compress);
      }
    }
  } else {
    // Each of these shapes an exchange PowerSGD does not have: refused, not ignored.
    const std::pair<const char*, bool> not_powersgd[] = {
        {"sync bmuf", t.bmuf},
        {"algorithm", given("algorithm")},
        {"momentum-correction", momentum_correction},
        {"no-momentum-correction", no_momentum_correction},
        {"momentum-masking", t.momentum_masking},
        {"dense-vectors", dense_vectors},
        {"no-dense-vectors", no_dense_vectors},
        {"density-warmup-epochs", given("density-warmup-epochs")},
        {"density", given("density")},
        {"topk-selection", given("topk-selection")},
        {"topk-scope", given("topk-scope")},
        {"onebit-scaling", given("onebit-scaling")},
        {"bits", given("bits")},
        {"qsgd-norm", given("qsgd-norm")},
        {"ternary-clip", given("ternary-clip")},
        {"bucket-size", given("bucket-size")},
        // The buckets only carry the dense epochs of --compress-after-epochs.
        {"bucket-mb", given("bucket-mb") && t.compress_after_epochs == 0}};
    for (const auto& [flag, set] : not_powersgd) {
      if (set) usage_error(std::string("--") + flag + " does not apply to --compress powersgd");
    }
    const std::string& feedback = vm["error-feedback"].as<std::string>();
    if (feedback != "on" && feedback != "off") {
      usage_error("--error-feedback: '" + feedback + "' is not one of on, off");
    }
    t.sync.error_feedback = feedback == "on";
    const PowerSgdOptions& p = t.sync.powersgd_options;
    if (p.rank < 1) usage_error("--powersgd-rank: must be >= 1");
    if (!(std::isfinite(p.min_compression_rate) && p.min_compression_rate >= 1)) {
      usage_error("--powersgd-min-compression-rate: must be finite and >= 1");
    }
  }
  const bool autotune = c.compress == "auto";
  t.sync.autotune.enabled = autotune;
  const auto method = powersgd || autotune ? std::optional(compression::Method::None)
                                           : parse_enum<compression::Method>(c.compress);
  if (!method) {
    usage_error("--compress: unknown method '" + c.compress + "' (" +
                enum_choices<compression::Method>() + ", powersgd, auto)");
  }
  // --compress auto: the candidates' methods ("dense" is none), for their parameters' flags.
  std::vector<compression::Method> candidates;
  if (autotune) {
    std::size_t at = 0;
    while (at <= c.auto_candidates.size()) {
      const std::size_t comma = std::min(c.auto_candidates.find(',', at), c.auto_candidates.size());
      const std::string name = c.auto_candidates.substr(at, comma - at);
      const auto m = name == "dense" ? std::optional(compression::Method::None)
                                     : parse_enum<compression::Method>(name);
      if (!m) {
        usage_error("--auto-candidates: unknown method '" + name + "' (dense, " +
                    enum_choices<compression::Method>() + ")");
      }
      candidates.push_back(*m);
      at = comma + 1;
    }
  } else {
    for (const char* flag :
         {"auto-candidates", "auto-warmup", "auto-trial-steps", "auto-retune", "auto-margin"}) {
      if (given(flag)) usage_error(std::string("--") + flag + " needs --compress auto");
    }
  }
  if (!powersgd) {
    try {
      const compression::cli::CompressionSettings settings =
          autotune ? compression::cli::compression_settings(vm, candidates, "--auto-candidates")
                   : compression::cli::compression_settings(vm, {&*method, 1}, "--compress");
      t.sync.compression = settings.compression;
      t.sync.error_feedback = settings.error_feedback;
    } catch (const po::error& e) {
      usage_error(e.what());
    }
  }
  t.sync.compression.method = *method;
  if (autotune) {
    for (const compression::Method m : candidates) {
      compression::CompressionConfig k = t.sync.compression;
      k.method = m;
      t.sync.autotune.candidates.push_back(k);
    }
    // Each refused by name: auto tunes the flat bucketed allreduce of --sync sync.
    const std::pair<const char*, bool> not_auto[] = {
        {"sync bmuf", t.bmuf},
        {"sync async-ps", t.async_ps},
        {"shard-optimizer", t.shard_optimizer},
        {"hierarchical", t.sync.hierarchical},
        {"algorithm", given("algorithm")},
        {"momentum-masking", t.momentum_masking},
        {"density-warmup-epochs", given("density-warmup-epochs")},
        {"error-feedback off", !t.sync.error_feedback}};
    for (const auto& [flag, set] : not_auto) {
      if (set) usage_error(std::string("--compress auto does not combine with --") + flag);
    }
    try {
      validate(t.sync.autotune);
    } catch (const Error& e) {
      usage_error(std::string("--auto-candidates/--auto-trial-steps/--auto-margin: ") + e.what());
    }
  }
  if (c.transport != "auto" && c.transport != "mpi" && c.transport != "ucx") {
    usage_error("--transport: expected mpi, ucx or auto, got '" + c.transport + "'");
  }
  if (c.bucket_mb <= 0) usage_error("--bucket-mb: must be positive");
  if (momentum_correction && no_momentum_correction) {
    usage_error("--momentum-correction and --no-momentum-correction contradict each other");
  }
  if (momentum_correction && t.sgd.momentum <= 0) {
    usage_error("--momentum-correction: needs --momentum > 0");
  }
  if (t.shard_optimizer) {
    // Each shapes what a sharded optimizer does not have (per-rank velocities, buckets, dense
    // 1-D tensors: every parameter goes through the one reduce-scatter): said, not ignored.
    const std::pair<const char*, bool> not_sharded[] = {
        {"no-momentum-correction", no_momentum_correction},
        {"dense-vectors", dense_vectors},
        {"no-dense-vectors", no_dense_vectors},
        {"bucket-mb", given("bucket-mb")},
    };
    for (const auto& [flag, set] : not_sharded) {
      if (set) {
        usage_error(std::string("--shard-optimizer: does not combine with --") + flag +
                    " (every parameter goes through the one reduce-scatter, without momentum "
                    "correction)");
      }
    }
  }
  // One rule for the default, shared with the Python package (compressor.hpp says why).
  t.sgd.momentum_correction =
      momentum_correction ||
      (!no_momentum_correction && !t.bmuf && !t.async_ps && !t.shard_optimizer && !powersgd &&
       t.sgd.momentum > 0 && t.sync.error_feedback &&
       (compression::momentum_correction_by_default(t.sync.compression.method) ||
        std::any_of(candidates.begin(), candidates.end(),
                    compression::momentum_correction_by_default)));
  const bool topk = *method == compression::Method::TopK;
  if (t.momentum_masking) {
    // What turned momentum correction's default off first, so that the message names it.
    if (!topk) usage_error("--momentum-masking: needs --compress topk, not " + c.compress);
    if (!t.sync.error_feedback) usage_error("--momentum-masking: needs --error-feedback on");
    if (!t.sgd.momentum_correction) {
      usage_error(
          "--momentum-masking: needs momentum correction (on by default for topk with "
          "--momentum > 0; --no-momentum-correction turns it off)");
    }
  }
  if (!(std::isfinite(t.clip_grad_norm) && t.clip_grad_norm >= 0)) {
    usage_error("--clip-grad-norm: must be finite and >= 0");
  }
  if (t.density_warmup_epochs < 0) usage_error("--density-warmup-epochs: must be >= 0");
  if (t.density_warmup_epochs > 0 && !topk) {
    usage_error("--density-warmup-epochs: needs --compress topk, not " + c.compress);
  }
  if (t.sync.guardrail.enabled) {
    if ((*method == compression::Method::None && !autotune) || powersgd || t.bmuf || t.async_ps) {
      usage_error("--guardrail: needs --sync sync and a --compress method of the buckets, not " +
                  c.compress);
    }
    if (!t.sync.error_feedback) usage_error("--guardrail: needs --error-feedback on");
    if (!c.guardrail_bounds.empty()) {
      const std::size_t comma = c.guardrail_bounds.find(',');
      try {
        if (comma == std::string::npos) throw std::invalid_argument(c.guardrail_bounds);
        std::size_t used = 0;
        const std::string lo = c.guardrail_bounds.substr(0, comma);
        const std::string hi = c.guardrail_bounds.substr(comma + 1);
        t.sync.guardrail.lower = std::stod(lo, &used);
        if (used != lo.size()) throw std::invalid_argument(lo);
        t.sync.guardrail.upper = std::stod(hi, &used);
        if (used != hi.size()) throw std::invalid_argument(hi);
      } catch (const std::exception&) {
        usage_error("--guardrail-bounds: expected LO,HI (e.g. 2,8), got '" + c.guardrail_bounds +
                    "'");
      }
    }
    try {
      validate(t.sync.guardrail);
    } catch (const Error& e) {
      usage_error(std::string("--guardrail-bounds/--guardrail-patience: ") + e.what());
    }
  } else if (!c.guardrail_bounds.empty() || given("guardrail-patience")) {
    usage_error(std::string("--") +
                (c.guardrail_bounds.empty() ? "guardrail-patience" : "guardrail-bounds") +
                " needs --guardrail");
  }
  if (t.sync.hierarchical) {
    // Each reduces otherwise, or reads a residual per parameter where a hierarchical bucket
    // keeps one per share of the bucket: refused, not ignored.
    const std::pair<const char*, bool> not_hierarchical[] = {
        {"sync bmuf", t.bmuf},
        {"sync async-ps", t.async_ps},
        {"shard-optimizer", t.shard_optimizer},
        {"compress powersgd", powersgd},
        // A gradient spike past fp16's range would stop the run (InvalidArgument on every
        // rank) where a flat run skips the step: the inter-host step cannot skip yet.
        {"compress fp16", t.sync.compression.method == compression::Method::Fp16},
        {"guardrail", t.sync.guardrail.enabled},
        {"compress auto", autotune},
        {"topk-gtopk on", t.sync.compression.gtopk},
        {"momentum-masking", t.momentum_masking},
        {"density-warmup-epochs", t.density_warmup_epochs > 0}};
    for (const auto& [flag, set] : not_hierarchical) {
      if (set) usage_error(std::string("--hierarchical does not combine with --") + flag);
    }
  }
  if (c.threads < 0) usage_error("--threads: must be >= 0");
  if (c.timeout_s < 0) usage_error("--timeout: must be >= 0");
  t.sync.bucket_bytes = static_cast<std::size_t>(c.bucket_mb * 1024 * 1024);
  if (const auto algorithm = parse_allreduce_algorithm(c.algorithm)) {
    t.sync.algorithm = *algorithm;
  } else {
    usage_error("--algorithm: unknown algorithm '" + c.algorithm + "'");
  }
  // Both shape the compressed exchange; with dense steps only they would silently do nothing.
  if (t.sync.compression.method == compression::Method::None && !powersgd && !autotune) {
    if (dense_vectors || no_dense_vectors) {
      usage_error(std::string(dense_vectors ? "--dense-vectors" : "--no-dense-vectors") +
                  " applies to a compressed --compress, not none");
    }
    if (t.compress_after_epochs > 0) {
      usage_error("--compress-after-epochs applies to a compressed --compress, not none");
    }
  }
  // The trainer's --algorithm is for the compressed exchange only; dense steps keep auto.
  if (t.sync.algorithm != AllreduceAlgorithm::Auto) {
    if (t.sync.compression.method == compression::Method::None) {
      usage_error("--algorithm: " + c.algorithm +
                  " cannot run --compress none (--algorithm chooses the compressed exchange; "
                  "dense steps choose their own)");
    }
    if (!algorithm_supports(t.sync.algorithm, t.sync.compression.method)) {
      usage_error("--algorithm: " + c.algorithm + " cannot run --compress " + c.compress + " (" +
                  c.compress + " runs " + supported_algorithms(t.sync.compression.method) + ")");
    }
  }
  // gTop-k cuts the sum at every step of sparse_rd. The library refuses it elsewhere only once the
  // run has started (the allreduce at the first compressed step, the server when it is set up),
  // after the data and the model were loaded.
  if (t.sync.compression.gtopk && t.async_ps) {
    usage_error(
        "--topk-gtopk on cuts a sparse allreduce's sum, which --sync async-ps does not run (its "
        "server sums the pushes)");
  }
  if (t.sync.compression.gtopk && t.sync.algorithm == AllreduceAlgorithm::SparseAllgather) {
    usage_error(
        "--topk-gtopk on cuts the sum at every step of sparse_rd; --algorithm sparse_allgather "
        "cannot run it (use --algorithm sparse_rd or auto)");
  }
  try {
    s.lr_steps = parse_int_list(c.lr_steps, "--lr-steps");
    s.batch_stages = parse_batch_schedule(c.batch_schedule, "--batch-schedule");
    validate(s);
    // The compressor validates its own parameters (bits, density, bucket).
    compression::make_compressor(t.sync.compression);
  } catch (const Error& e) {
    usage_error(e.what());
  }
  return c;
}

std::unique_ptr<Communicator> make_communicator(const Cli& c, CountingTransport*& counter) {
  const bool launched = std::getenv("FRUGAL_RANK") != nullptr;
  std::string transport = c.transport;
  if (transport == "auto") transport = launched ? "ucx" : "mpi";
  CommunicatorOptions options;
  if (c.timeout_s > 0) {
    options.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(c.timeout_s * 1000));
  }
  std::unique_ptr<Transport> inner;
  if (transport == "mpi") {
    if (launched) {
      usage_error(
          "--transport mpi needs mpirun, but FRUGAL_RANK is set (started by "
          "scripts/launch?): use --transport ucx or auto");
    }
    ensure_mpi_initialized();
    inner = make_mpi_transport(MPI_COMM_WORLD);
  } else {
#ifdef FRUGAL_HAVE_UCX
    if (launched) {
      auto bootstrap = make_tcp_bootstrap(tcp_bootstrap_options_from_env());
      inner = make_ucx_transport(*bootstrap);
    } else {
      ensure_mpi_initialized();
      auto bootstrap = make_mpi_bootstrap(MPI_COMM_WORLD);
      inner = make_ucx_transport(*bootstrap);
    }
#else
    usage_error(launched ? std::string("FRUGAL_RANK is set (scripts/launch), but this build has no "
                                       "UCX transport, which the launcher bootstrap needs: "
                                       "rebuild with UCX (libucx-dev) or run under mpirun")
                         : std::string("--transport ucx: this build has no UCX transport"));
#endif
  }
  auto counting = std::make_unique<CountingTransport>(std::move(inner));
  counter = counting.get();
  return std::make_unique<Communicator>(std::move(counting), options);
}

}  // namespace

int main(int argc, char** argv) {
  Cli cli = parse(argc, argv);
  int rank = 0;
  try {
    const int threads =
        cli.threads > 0
            ? cli.threads
            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local_ranks());
    torch::set_num_threads(threads);
    CountingTransport* counter = nullptr;
    std::unique_ptr<Communicator> comm = make_communicator(cli, counter);
    rank = comm->rank();
    if (cli.train.sync.hierarchical) {
      // Every rank learns the same topology, so an unequal one is refused on every rank alike.
      HostTopology topology = discover_host_topology(*comm);
      for (const std::vector<int>& host : topology.hosts) {
        if (host.size() != topology.hosts.front().size()) {
          throw Error(ErrorCode::InvalidArgument,
                      "--hierarchical: needs the same number of ranks on every host, but host 0 "
                      "holds " +
                          std::to_string(topology.hosts.front().size()) + " and another " +
                          std::to_string(host.size()) +
                          " (set FRUGAL_HOST_ID per rank, see docs/hierarchical.md)");
        }
      }
      std::vector<int> host_of(static_cast<std::size_t>(comm->size()));
      for (std::size_t h = 0; h < topology.hosts.size(); ++h) {
        for (const int r : topology.hosts[h])
          host_of[static_cast<std::size_t>(r)] = static_cast<int>(h);
      }
      counter->set_hosts(std::move(host_of));
      cli.train.sync.topology = std::move(topology);
    }
    DataOptions data_options;
    data_options.image_size = cli.image_size;
    data_options.skip_corrupt = cli.skip_corrupt;
    const auto train = make_dataset(cli.data, Split::Train, data_options);
    data_options.augment = false;
    const auto val = make_dataset(cli.data, Split::Val, data_options);
    cli.train.progress_bar = !cli.no_progress && ::isatty(STDOUT_FILENO) != 0;
    if (rank == 0) {
      std::cout << "frugal-train: " << comm->size() << " ranks over " << comm->transport().name()
                << ", " << threads << " torch threads per rank; " << train->describe() << "; "
                << val->describe() << "; model " << cli.train.model
                << (cli.train.zero_init_residual ? "" : " (residual γ starts at 1)") << ", "
                << describe_sync(cli) << "; optimizer state "
                << optimizer_state_bytes(cli.train.sgd, parameter_count(cli.train, *train),
                                         cli.train.shard_optimizer, comm->size(), 0)
                << " bytes per rank (momentum"
                << (cli.train.shard_optimizer
                        ? ", rank 0's shard of " + std::to_string(comm->size())
                        : std::string())
                << ")\n"
                << std::flush;
    }
    const RunResult result = run_training(*comm, counter, *train, *val, cli.train, std::cout);
    if (rank == 0 && !result.epochs.empty()) {
      const EpochSummary& last = result.epochs.back();
      std::printf("final test accuracy: top-1 %.2f%%, top-5 %.2f%% (loss %.4f)\n",
                  100 * last.val_top1, 100 * last.val_top5, last.val_loss);
    }
    std::fflush(stdout);
    return 0;
  } catch (const Error& e) {
    std::fflush(stdout);
    if (e.code() == ErrorCode::InvalidArgument) {
      std::cerr << "frugal-train: rank " << rank << ": " << e.what() << '\n';
      std::cerr.flush();
      std::_Exit(kUsageError);
    }
    std::cerr << "frugal-train: rank " << rank << ": training failed (" << to_string(e.code())
              << "): " << e.what();
    if (!cli.train.checkpoint_dir.empty()) {
      std::cerr << "; the last complete checkpoint in " << cli.train.checkpoint_dir
                << " is intact (--resume continues from it)";
    }
    std::cerr << '\n';
    std::cerr.flush();
    // Peers may be gone: MPI_Finalize and the communicator's shutdown could wait for them.
    std::_Exit(kRunFailed);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "frugal-train: rank " << rank << ": " << e.what() << '\n';
    std::cerr.flush();
    std::_Exit(1);
  }
}

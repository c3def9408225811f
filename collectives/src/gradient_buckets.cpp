#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "../patterns/chunking.hpp"
#include "agreement.hpp"
#include "autotune.hpp"
#include "byte_image.hpp"
#include "fnv1a.hpp"
#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/elastic.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/error.hpp"
#include "guardrail.hpp"
#include "lazy_require.hpp"
#include "refusal.hpp"
#include "state_binding.hpp"

namespace frugal {

namespace {

constexpr std::uint32_t kMagic = 0x42475246;  // "FRGB"
constexpr std::uint32_t kVersion = 1;
// Version 2 (written with the guardrail on): the guardrail's step count after the record count,
// and each record's guardrail bookkeeping after its state.
constexpr std::uint32_t kGuardVersion = 2;
// Version 3 (written under BucketOptions::hierarchical): each record's state is a
// HierarchicalState image.
constexpr std::uint32_t kHierarchicalVersion = 3;
// Version 4 (written under BucketOptions::autotune): both step counts (guardrail, auto) after the
// record count, and each record's guardrail bookkeeping (which holds the carry) and auto
// bookkeeping after its state.
constexpr std::uint32_t kAutotuneVersion = 4;

struct SavedRecord {
  std::uint64_t key = 0;
  std::span<const std::byte> state;
  detail::GuardrailBucket guard;  // rung 0, nothing carried, in a version-1 image
  detail::AutotuneBucket tune;    // a version-4 image's
};
struct SavedStates {
  std::vector<SavedRecord> records;
  bool guarded = false;       // a version-2 or 4 image
  bool hierarchical = false;  // a version-3 image
  bool autotuned = false;     // a version-4 image
  std::uint64_t guard_steps = 0;
  std::uint64_t auto_steps = 0;
};

// The records of a save_state() image, in bucket order.
SavedStates parse_image(std::span<const std::byte> image) {
  detail::ImageReader r(image, "GradientBuckets state");
  if (r.get<std::uint32_t>() != kMagic) r.malformed("not a bucket state");
  const auto version = r.get<std::uint32_t>();
  if (version != kVersion && version != kGuardVersion && version != kHierarchicalVersion &&
      version != kAutotuneVersion) {
    r.malformed("not a bucket state");
  }
  const auto count = r.get<std::uint64_t>();
  SavedStates saved;
  saved.autotuned = version == kAutotuneVersion;
  saved.guarded = version == kGuardVersion || saved.autotuned;
  saved.hierarchical = version == kHierarchicalVersion;
  if (saved.guarded) saved.guard_steps = r.get<std::uint64_t>();
  if (saved.autotuned) saved.auto_steps = r.get<std::uint64_t>();
  for (std::uint64_t i = 0; i < count; ++i) {
    SavedRecord record;
    record.key = r.get<std::uint64_t>();
    record.state = r.get_blob();
    if (saved.guarded) record.guard = detail::guardrail_load(r);
    if (saved.autotuned) record.tune = detail::autotune_load(r);
    saved.records.push_back(std::move(record));
  }
  // Bytes past the last record mean a corrupt or concatenated image, not one save_state() wrote.
  if (!r.done()) {
    r.malformed(std::to_string(r.rest().size()) + " trailing bytes after its " +
                std::to_string(count) + " records (image is " + std::to_string(image.size()) +
                " bytes)");
  }
  return saved;
}

detail::ImageWriter start_image(std::size_t buckets, bool guarded, std::uint64_t guard_steps,
                                bool hierarchical = false, bool autotuned = false,
                                std::uint64_t auto_steps = 0) {
  detail::ImageWriter w;
  w.put(kMagic);
  w.put(hierarchical ? kHierarchicalVersion
        : autotuned  ? kAutotuneVersion
        : guarded    ? kGuardVersion
                     : kVersion);
  w.put<std::uint64_t>(buckets);
  if (guarded || autotuned) w.put(guard_steps);
  if (autotuned) w.put(auto_steps);
  return w;
}

// `options` with a guardrail rung's setting: a dense rung has no error feedback, and a rung of
// another method runs the configured algorithm only if that algorithm supports it.
AllreduceOptions with_setting(AllreduceOptions options, const compression::CompressionConfig& c) {
  if (c.method == compression::Method::None) {
    // Dense (also auto's dense candidate, whose configured method is None too): no residual.
    options.error_feedback = false;
    options.algorithm = AllreduceAlgorithm::Auto;
  } else if (c.method != options.compression.method) {
    if (!algorithm_supports(options.algorithm, c.method)) {
      options.algorithm = AllreduceAlgorithm::Auto;
    }
  }
  options.compression = c;
  return options;
}

}  // namespace

GradientBuckets::GradientBuckets(Communicator& comm, BucketOptions options)
    : comm_(comm), options_(std::move(options)) {
  require(options_.bucket_bytes > 0, "bucket_bytes", "must be positive");
  validate(options_.guardrail);
  require(!options_.guardrail.enabled || options_.allreduce.error_feedback ||
              options_.allreduce.compression.method == compression::Method::None,
          "guardrail", "needs allreduce.error_feedback: the residual is what it watches");
  // From the options alone, before any communication: every rank refuses alike.
  require(options_.hierarchical || !options_.topology, "topology",
          "is for BucketOptions::hierarchical, which is off");
  require(!options_.hierarchical || !options_.guardrail.enabled, "hierarchical",
          "does not combine with the guardrail (guardrail.enabled): the guardrail's residual "
          "ratios and carries are kept for flat buckets only");
  validate(options_.autotune);
  if (options_.autotune.enabled) {
    require(!options_.hierarchical, "hierarchical",
            "does not combine with autotune (compression = auto): hierarchical buckets are "
            "reduced one after another after backward and keep no carry to switch settings with");
    require(options_.allreduce.compression.method == compression::Method::None, "autotune", [&] {
      return std::string(
                 "chooses the compression method: allreduce.compression.method "
                 "must be none, got ") +
             std::string(compression::to_string(options_.allreduce.compression.method));
    });
    require(options_.allreduce.error_feedback, "autotune",
            "needs allreduce.error_feedback: its compressed candidates are biased without it");
    candidates_ = options_.autotune.candidates.empty()
                      ? default_autotune_candidates(options_.allreduce.compression)
                      : options_.autotune.candidates;
  }
  options_.allreduce.state = nullptr;
  options_.allreduce.stats = nullptr;
  options_.allreduce.segments = {};  // each bucket passes its own
  if (options_.hierarchical) {
    hierarchy_ = options_.topology ? std::make_unique<Hierarchy>(comm_, *options_.topology)
                                   : std::make_unique<Hierarchy>(comm_);
  }
}

GradientBuckets::~GradientBuckets() {
  wait_all_launched();
}

std::size_t GradientBuckets::add(std::string name, std::size_t count, std::size_t dims) {
  const std::size_t id = add(std::move(name), count);
  tensors_[id].dense = dims <= 1 && options_.dense_vectors &&
                       (options_.allreduce.compression.method != compression::Method::None ||
                        options_.autotune.enabled);
  return id;
}

std::size_t GradientBuckets::add(std::string name, std::size_t count) {
  require(buckets_.empty(), "add", "tensors can only be registered before the first step");
  require(!name.empty(), "name", "must not be empty");
  require(count > 0, "count", [&] { return "tensor '" + name + "' has no elements"; });
  for (const Tensor& t : tensors_) {
    require(t.name != name, "name", [&] { return "tensor '" + name + "' is registered twice"; });
  }
  Tensor t;
  t.name = std::move(name);
  t.count = count;
  tensors_.push_back(std::move(t));
  return tensors_.size() - 1;
}

void GradientBuckets::freeze_layout() {
  require(!tensors_.empty(), "tensors", "no tensor registered");
  const std::size_t capacity = std::max<std::size_t>(1, options_.bucket_bytes / sizeof(float));
  // Two buckets fill side by side, compressed and dense; each takes its place in the launch
  // order when it is closed (full, or at the end), so a dense bucket of vectors spread over the
  // whole backward does not hold back the compressed buckets that fill before it does.
  std::vector<Bucket> open(2);
  open[1].dense = true;
  const auto close = [&](Bucket& b) {
    if (b.tensors.empty()) return;
    const bool dense = b.dense;
    for (std::size_t id : b.tensors) tensors_[id].bucket = buckets_.size();
    buckets_.push_back(std::move(b));
    b = Bucket{};
    b.dense = dense;
  };
  for (std::size_t id = 0; id < tensors_.size(); ++id) {
    Tensor& t = tensors_[id];
    Bucket& b = open[t.dense ? 1 : 0];
    if (!b.data.empty() && b.data.size() + t.count > capacity) close(b);
    t.offset = b.data.size();
    b.tensors.push_back(id);
    b.segments.push_back(t.count);
    b.data.resize(b.data.size() + t.count);
  }
  // The bucket holding the last-registered tensor (first in backward) closes last.
  const bool last_dense = tensors_.back().dense;
  close(open[last_dense ? 0 : 1]);
  close(open[last_dense ? 1 : 0]);
  for (Bucket& b : buckets_) {
    // A stable hash of the bucket's tensor names and sizes, so a checkpoint's state finds its
    // bucket again even if the model registers tensors in a different process.
    detail::Fnv1a h;
    for (std::size_t id : b.tensors) {
      h.add(tensors_[id].name.data(), tensors_[id].name.size()).add64(tensors_[id].count);
    }
    if (b.dense) h.add("dense", 5);
    b.key = h.value();
    b.pending = b.tensors.size();
    b.state = std::make_unique<AllreduceState>();
    if (skips_non_finite()) b.before_step = std::make_unique<AllreduceState>();
    if (hierarchy_) {
      b.hierarchical = std::make_unique<HierarchicalState>();
      if (skips_non_finite()) b.hierarchical_before = std::make_unique<HierarchicalState>();
    }
    if (options_.autotune.enabled && !b.dense) {
      // The guardrail's record holds the carry a change of candidate flushes into; its rung
      // stays 0 unless the guardrail is enabled too (ladder_for).
      b.tune = std::make_unique<detail::AutotuneBucket>();
      b.tune->samples.resize(candidates_.size());
      b.ladder = ladder_for(0, b.data.size());
      b.guard = std::make_unique<detail::GuardrailBucket>();
      if (skips_non_finite()) {
        b.guard_before = std::make_unique<detail::GuardrailBucket>();
        b.tune_before = std::make_unique<detail::AutotuneBucket>();
      }
    } else if (options_.guardrail.enabled && !b.dense &&
               options_.allreduce.compression.method != compression::Method::None) {
      b.ladder = guardrail_ladder(options_.allreduce.compression, b.data.size());
      b.guard = std::make_unique<detail::GuardrailBucket>();
      if (skips_non_finite()) b.guard_before = std::make_unique<detail::GuardrailBucket>();
    }
  }
}

std::vector<compression::CompressionConfig> GradientBuckets::ladder_for(std::size_t candidate,
                                                                        std::size_t count) const {
  const compression::CompressionConfig& c = candidates_[candidate];
  if (options_.guardrail.enabled) return guardrail_ladder(c, count);
  return {c};
}

std::size_t GradientBuckets::bucket_candidate(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  require(b.tune != nullptr, "bucket", [&] {
    return "bucket " + std::to_string(bucket) +
           (options_.autotune.enabled ? " is dense (no candidates)" : ": autotune is off");
  });
  return b.tune->current;
}

std::size_t GradientBuckets::bucket_rung(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.guard ? b.guard->rung : 0;
}

compression::CompressionConfig GradientBuckets::bucket_setting(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  if (b.dense) return {};
  return b.guard ? b.ladder[b.guard->rung] : options_.allreduce.compression;
}

double GradientBuckets::bucket_residual_ratio(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.guard && b.guard->seeded ? b.guard->ratio : 0.0;
}

std::span<const float> GradientBuckets::guardrail_carry(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.guard ? std::span<const float>(b.guard->carry) : std::span<const float>();
}

AllreduceOptions GradientBuckets::options_for(const Bucket& b) const {
  AllreduceOptions options = options_.allreduce;
  // Without this every bucket would draw the same number for its element i at a step: one
  // stochastic rounding error, repeated in every layer, instead of independent ones.
  options.seed = compression::stream_seed(options.seed, b.key);
  if (b.dense) {
    options.compression = compression::CompressionConfig{};
    options.error_feedback = false;
    options.algorithm = AllreduceAlgorithm::Auto;
  } else if (b.guard) {
    options = with_setting(options, b.ladder[b.guard->rung]);
  }
  return options;
}

std::size_t GradientBuckets::bucket_of(std::size_t id) const {
  require(id < tensors_.size(), "id", [&] { return "no tensor " + std::to_string(id); });
  require(!buckets_.empty(), "bucket_of", "the layout is fixed at the first mark_ready");
  return tensors_[id].bucket;
}

bool GradientBuckets::bucket_is_dense(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  return buckets_[bucket].dense;
}

AllreduceHandle::State GradientBuckets::bucket_state(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.launched ? b.handle.state() : AllreduceHandle::State::Queued;
}

const AllreduceState& GradientBuckets::allreduce_state(std::size_t bucket) const {
  require(bucket < buckets_.size(), "bucket",
          [&] { return "no bucket " + std::to_string(bucket); });
  const Bucket& b = buckets_[bucket];
  return b.hierarchical ? b.hierarchical->share() : *b.state;
}

void GradientBuckets::scale_residuals(float factor) {
  const bool in_step = std::any_of(buckets_.begin(), buckets_.end(),
                                   [](const Bucket& b) { return b.pending != b.tensors.size(); });
  require(!in_step, "scale_residuals", "only between steps (a tensor was marked ready)");
  require(std::isfinite(factor) && factor >= 0.0f, "factor",
          [&] { return "must be finite and >= 0, got " + std::to_string(factor); });
  const auto scale = [factor](std::vector<float>& carry) {
    for (float& x : carry) x *= factor;
  };
  for (Bucket& b : buckets_) {
    b.state->scale_residuals(factor);
    if (undo_possible_ && b.before_step) b.before_step->scale_residuals(factor);
    if (b.hierarchical) b.hierarchical->scale_residuals(factor);
    if (undo_possible_ && b.hierarchical_before) b.hierarchical_before->scale_residuals(factor);
    if (b.guard) scale(b.guard->carry);
    if (undo_possible_ && b.guard_before) scale(b.guard_before->carry);
  }
}

void GradientBuckets::mark_ready(std::string_view name, std::span<float> grad) {
  for (std::size_t id = 0; id < tensors_.size(); ++id) {
    if (tensors_[id].name == name) return mark_ready(id, grad);
  }
  throw Error(ErrorCode::InvalidArgument,
              "mark_ready: no tensor named '" + std::string(name) + "'");
}

void GradientBuckets::mark_ready(std::size_t id, std::span<float> grad) {
  require(id < tensors_.size(), "id", [&] { return "no tensor " + std::to_string(id); });
  if (buckets_.empty()) freeze_layout();
  Tensor& t = tensors_[id];
  require(grad.size() == t.count, "grad", [&] {
    return "tensor '" + t.name + "' has " + std::to_string(t.count) + " elements, got " +
           std::to_string(grad.size());
  });
  require(t.grad.empty(), "mark_ready",
          [&] { return "tensor '" + t.name + "' was already marked this step"; });
  Bucket& b = buckets_[t.bucket];
  std::copy(grad.begin(), grad.end(), b.data.begin() + static_cast<std::ptrdiff_t>(t.offset));
  t.grad = grad;
  // Hierarchical buckets are reduced in finish() (BucketOptions::hierarchical says why).
  if (--b.pending == 0 && !hierarchy_) launch_ready_buckets();
}

void GradientBuckets::launch_ready_buckets() {
  // Buckets start in index order on every rank, whatever order their tensors became ready in:
  // the launch order is the collective order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    Bucket& b = buckets_[next_launch_++];
    undo_possible_ = false;
    if (b.before_step) *b.before_step = *b.state;
    if (b.tune_before) {
      *b.tune_before = *b.tune;
      b.ladder_before = b.ladder;
    }
    if (b.guard) {
      if (b.guard_before) *b.guard_before = *b.guard;
      const std::vector<float>& carry = b.guard->carry;
      for (std::size_t i = 0; i < carry.size(); ++i) b.data[i] += carry[i];
      detail::guardrail_input_norms(b.data, b.state->worker_residual(), b.input_norm2,
                                    b.encoded_norm2);
    }
    AllreduceOptions options = options_for(b);
    options.segments = b.segments;
    options.state = b.state.get();
    b.stats = AllreduceStats{};
    options.stats = &b.stats;
    b.seconds = 0;
    b.ran = options.compression;
    // allreduce_async's work, timed on the engine from its start: what auto charges the bucket
    // (autotune.hpp says why not from here). b.segments stays put until finish().
    b.handle = AllreduceHandle(comm_.engine().submit([this, &b, options]() {
      const auto start = std::chrono::steady_clock::now();
      allreduce(comm_, std::span<float>(b.data), options);
      b.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }));
    b.launched = true;
  }
}

void GradientBuckets::wait_all_launched() noexcept {
  for (Bucket& b : buckets_) {
    if (!b.launched) continue;
    try {
      b.handle.wait();
    } catch (...) {
    }
  }
}

void GradientBuckets::finish() {
  require(!buckets_.empty(), "finish", "no tensor was marked ready");
  const auto missing = std::find_if(tensors_.begin(), tensors_.end(),
                                    [](const Tensor& t) { return t.grad.empty(); });
  if (missing != tensors_.end()) {
    const Error error(ErrorCode::InvalidArgument,
                      "finish: tensor '" + missing->name + "' was not marked ready this step");
    // What was launched must end before this object's buffers can be reused or freed (and
    // before the blocking refusals below may start).
    wait_all_launched();
    // Peers that marked every tensor have launched the buckets this rank has not: each is
    // refused collectively, in launch order, so that their allreduces end now naming this rank
    // instead of waiting for it until the timeout. Costs one agreement and one small allgather
    // per bucket, on this error path only.
    // Hierarchical: the peers are all in bucket 0's hierarchical_allreduce, whose agreement on
    // the communicator this refusal joins; they stop there.
    const std::size_t last =
        hierarchy_ ? std::min<std::size_t>(1, buckets_.size()) : buckets_.size();
    for (std::size_t i = next_launch_; i < last; ++i) {
      detail::AgreementTerms terms;
      terms.kind = detail::CollectiveKind::Allreduce;
      terms.count = buckets_[i].data.size();
      try {
        detail::refuse(comm_, options_for(buckets_[i]), terms, error);
      } catch (const Error&) {
        // refuse() rethrows `error`, thrown once below.
      }
    }
    for (Tensor& t : tensors_) t.grad = {};
    for (Bucket& b : buckets_) {
      b.pending = b.tensors.size();
      b.launched = false;
    }
    next_launch_ = 0;
    throw error;
  }
  std::exception_ptr first_error;
  bool skipped = false;
  last_step_wire_bytes_ = 0;
  last_events_.clear();
  last_autotune_events_.clear();
  if (hierarchy_) {
    first_error = reduce_hierarchically(skipped);
  } else {
    for (Bucket& b : buckets_) {
      try {
        b.handle.wait();
        skipped |= b.stats.non_finite_skipped;
        last_step_wire_bytes_ += b.stats.wire_bytes_sent;
      } catch (...) {
        if (!first_error) first_error = std::current_exception();
      }
    }
  }
  if (!first_error && skips_non_finite()) {
    // A bucket skipped on every rank, or a sum that overflowed (bit-identical everywhere): the
    // step as a whole is skipped alike on every rank, so no bucket may keep its progress.
    for (std::size_t i = 0; i < buckets_.size() && !skipped; ++i) {
      skipped = detail::has_non_finite(std::as_bytes(std::span(buckets_[i].data)), DType::Float32);
    }
    if (skipped) restore_states_before_step();
    undo_possible_ = !skipped;
  }
  last_step_skipped_ = skipped;
  for (Bucket& b : buckets_) {
    for (std::size_t id : b.tensors) {
      Tensor& t = tensors_[id];
      if (!first_error && !skipped) {
        std::copy_n(b.data.begin() + static_cast<std::ptrdiff_t>(t.offset), t.count,
                    t.grad.begin());
      }
      t.grad = {};
    }
    b.pending = b.tensors.size();
    b.launched = false;
    // Reduced: what it carried is in this step's result or the new residual now.
    if (b.guard && !first_error && !skipped) b.guard->carry.clear();
  }
  next_launch_ = 0;
  if (first_error) std::rethrow_exception(first_error);
  // The guardrail observes the step its setting ran; auto then may change the candidate (which
  // resets the guardrail's bookkeeping for the new ladder).
  if (!skipped && options_.guardrail.enabled) run_guardrail();
  if (!skipped && options_.autotune.enabled) run_autotune();
}

void GradientBuckets::run_autotune() {
  std::vector<std::size_t> tuned;
  std::vector<std::size_t> current;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    if (!buckets_[i].tune) continue;
    tuned.push_back(i);
    current.push_back(buckets_[i].tune->current);
  }
  if (tuned.empty()) return;
  const std::uint64_t step = auto_steps_ + 1;
  const detail::AutotunePhase phase =
      detail::autotune_phase(options_.autotune, candidates_.size(), step);
  std::vector<double> costs(tuned.size(), 0.0);
  if (phase.trial || auto_check_) {
    // Per rank: each tuned bucket's cost, then the digest's 64 bits. Gathered whole (no sum or
    // max in flight), so every rank computes the same max from the same bytes.
    const std::size_t width = tuned.size() + 1;
    std::vector<double> mine(width, 0.0);
    for (std::size_t j = 0; j < tuned.size(); ++j) {
      const Bucket& b = buckets_[tuned[j]];
      double cost = b.seconds;
      if (options_.autotune.cost) {
        cost = options_.autotune.cost(tuned[j], b.ran, b.seconds);
      }
      // Refused after the gather, on every rank alike.
      mine[j] = std::isfinite(cost) && cost >= 0 ? cost : -1.0;
    }
    const std::uint64_t digest =
        detail::autotune_digest(options_.autotune, candidates_, auto_steps_, current);
    std::memcpy(&mine[tuned.size()], &digest, sizeof digest);
    std::vector<double> all(width * static_cast<std::size_t>(comm_.size()));
    CollectiveOptions o;
    o.timeout = options_.allreduce.timeout;
    allgather(comm_, std::as_bytes(std::span<const double>(mine)),
              std::as_writable_bytes(std::span<double>(all)), o);
    for (int r = 0; r < comm_.size(); ++r) {
      const double* row = &all[static_cast<std::size_t>(r) * width];
      std::uint64_t theirs = 0;
      std::memcpy(&theirs, &row[tuned.size()], sizeof theirs);
      if (theirs != digest) {
        throw Error(ErrorCode::Mismatch,
                    "GradientBuckets autotune: rank " + std::to_string(r) +
                        "'s autotune options, candidates, step count or bucket candidates "
                        "differ from rank " +
                        std::to_string(comm_.rank()) + "'s");
      }
      for (std::size_t j = 0; j < tuned.size(); ++j) {
        require(row[j] >= 0, "autotune.cost", [&] {
          return "rank " + std::to_string(r) + "'s cost of bucket " + std::to_string(tuned[j]) +
                 " is not finite and >= 0";
        });
        costs[j] = std::max(costs[j], row[j]);
      }
    }
    auto_check_ = false;
  }
  auto_steps_before_ = auto_steps_;
  auto_steps_ = step;
  const detail::AutotunePhase next =
      detail::autotune_phase(options_.autotune, candidates_.size(), step + 1);
  for (std::size_t j = 0; j < tuned.size(); ++j) {
    Bucket& b = buckets_[tuned[j]];
    detail::AutotuneBucket& t = *b.tune;
    if (phase.trial) t.samples[phase.candidate].push_back(costs[j]);
    std::size_t target = t.current;
    if (phase.trial && phase.last) {
      AutotuneEvent e;
      e.step = step;
      e.bucket = tuned[j];
      e.decision = true;
      target = detail::autotune_choose(t.samples, options_.autotune.margin, e.costs);
      e.from = describe(candidates_[t.current]);
      e.to = target == t.current ? e.from : describe(candidates_[target]);
      last_autotune_events_.push_back(std::move(e));
      for (std::vector<double>& s : t.samples) s.clear();
    } else if (next.trial) {
      target = next.candidate;
      if (target != t.current) {
        AutotuneEvent e;
        e.step = step;
        e.bucket = tuned[j];
        e.from = describe(candidates_[t.current]);
        e.to = describe(candidates_[target]);
        last_autotune_events_.push_back(std::move(e));
      }
    }
    if (target != t.current) switch_candidate(b, target);
  }
}

void GradientBuckets::switch_candidate(Bucket& b, std::size_t candidate) {
  change_setting(b);
  b.tune->current = candidate;
  b.ladder = ladder_for(candidate, b.data.size());
  // A fresh guardrail record on rung 0 of the new ladder, keeping what was carried.
  std::vector<float> carry = std::move(b.guard->carry);
  *b.guard = detail::GuardrailBucket{};
  b.guard->carry = std::move(carry);
}

void GradientBuckets::run_guardrail() {
  std::vector<std::size_t> guarded;
  std::vector<std::size_t> rungs;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    if (!buckets_[i].guard) continue;
    guarded.push_back(i);
    rungs.push_back(buckets_[i].guard->rung);
  }
  if (guarded.empty()) return;
  // Per bucket: ||r_after||^2, ||x||^2, ||x + r_before||^2; then the digest in four 16-bit pieces
  // and their squares. Summed over the ranks in one allreduce, bit-identical everywhere.
  constexpr std::size_t kPieces = 4;
  std::vector<double> sums(3 * guarded.size() + 2 * kPieces);
  for (std::size_t j = 0; j < guarded.size(); ++j) {
    const Bucket& b = buckets_[guarded[j]];
    sums[3 * j] = detail::guardrail_square_norm(b.state->worker_residual());
    sums[3 * j + 1] = b.input_norm2;
    sums[3 * j + 2] = b.encoded_norm2;
  }
  const std::uint64_t digest = detail::guardrail_digest(options_.guardrail, rungs);
  const std::size_t at = 3 * guarded.size();
  for (std::size_t k = 0; k < kPieces; ++k) {
    const auto piece = static_cast<double>((digest >> (16 * k)) & 0xffffU);
    sums[at + 2 * k] = piece;
    sums[at + 2 * k + 1] = piece * piece;
  }
  AllreduceOptions o;
  o.op = ReduceOp::Sum;
  o.timeout = options_.allreduce.timeout;
  allreduce(comm_, std::span<double>(sums), o);
  // Exact in doubles: pieces < 2^16, squares < 2^32, sums of up to 2^20 ranks < 2^53.
  const auto ranks = static_cast<double>(comm_.size());
  for (std::size_t k = 0; k < kPieces; ++k) {
    const double sum = sums[at + 2 * k];
    if (sum * sum != ranks * sums[at + 2 * k + 1]) {
      throw Error(ErrorCode::Mismatch,
                  "GradientBuckets guardrail: the ranks' guardrail options or bucket rungs "
                  "differ");
    }
  }
  guard_steps_before_ = guard_steps_;
  ++guard_steps_;
  for (std::size_t j = 0; j < guarded.size(); ++j) {
    Bucket& b = buckets_[guarded[j]];
    const detail::GuardrailSums step{sums[3 * j], sums[3 * j + 1], sums[3 * j + 2]};
    const std::size_t from = b.guard->rung;
    if (!detail::guardrail_decide(*b.guard, options_.guardrail, step, b.ladder.size())) continue;
    GuardrailEvent e;
    e.step = guard_steps_;
    e.bucket = guarded[j];
    e.from_rung = from;
    e.to_rung = b.guard->rung;
    e.from = describe(b.ladder[from]);
    e.to = describe(b.ladder[e.to_rung]);
    e.ratio = b.guard->ratio;
    e.relative_error = b.guard->relative_error;
    last_events_.push_back(std::move(e));
    change_setting(b);
  }
}

void GradientBuckets::change_setting(Bucket& b) {
  // What the old setting's error feedback holds, in input units, goes into the next input.
  // Added to what an earlier change of this step left (the guardrail's, then auto's).
  std::vector<float> carry(b.data.size(), 0.0f);
  bool any = !b.guard->carry.empty();
  for (std::size_t i = 0; i < b.guard->carry.size() && i < carry.size(); ++i) {
    carry[i] = b.guard->carry[i];
  }
  const std::span<const float> worker = b.state->worker_residual();
  for (std::size_t i = 0; i < worker.size() && i < carry.size(); ++i) carry[i] += worker[i];
  any |= !worker.empty();
  const std::span<const float> server = b.state->server_residual();
  if (!server.empty()) {
    // This rank owns chunk `rank` of the two-phase split; the residual is in output units.
    const patterns::Range chunk = patterns::chunk_range(b.data.size(), comm_.size(), comm_.rank());
    const float scale =
        options_.allreduce.op == ReduceOp::Average ? static_cast<float>(comm_.size()) : 1.0f;
    for (std::size_t e = 0; e < server.size() && e < chunk.count; ++e) {
      carry[chunk.offset + e] += scale * server[e];
    }
    any = true;
  }
  b.guard->carry = any ? std::move(carry) : std::vector<float>{};
  // A fresh state for the new setting; the step counter goes on, so the random streams do too.
  const std::uint64_t steps = b.state->steps();
  b.state = std::make_unique<AllreduceState>(b.state->decay());
  detail::StateBinding::set_steps(*b.state, steps);
}

void GradientBuckets::restore_states_before_step() noexcept {
  for (Bucket& b : buckets_) {
    if (b.before_step) std::swap(b.state, b.before_step);
    if (b.hierarchical_before) std::swap(b.hierarchical, b.hierarchical_before);
    if (b.guard_before) std::swap(b.guard, b.guard_before);
    if (b.tune_before) {
      std::swap(b.tune, b.tune_before);
      std::swap(b.ladder, b.ladder_before);
    }
  }
}

void GradientBuckets::undo_last_step() {
  require(skips_non_finite(), "undo_last_step", "needs allreduce.non_finite = skip");
  require(undo_possible_, "undo_last_step",
          "only once, after a finish() that reduced (not skipped) and before the next step");
  restore_states_before_step();
  guard_steps_ = guard_steps_before_;
  auto_steps_ = auto_steps_before_;
  last_events_.clear();
  last_autotune_events_.clear();
  undo_possible_ = false;
  last_step_skipped_ = true;
}

std::vector<std::byte> GradientBuckets::save_state() const {
  require(!buckets_.empty(), "save_state", "the layout is fixed at the first mark_ready");
  const bool autotuned = options_.autotune.enabled;
  const bool guarded = options_.guardrail.enabled || autotuned;
  detail::ImageWriter w = start_image(buckets_.size(), guarded, guard_steps_, hierarchy_ != nullptr,
                                      autotuned, auto_steps_);
  for (const Bucket& b : buckets_) {
    w.put(b.key);
    w.put_blob(b.hierarchical ? b.hierarchical->save() : b.state->save());
    if (guarded) detail::guardrail_save(w, b.guard ? *b.guard : detail::GuardrailBucket{});
    if (autotuned) detail::autotune_save(w, b.tune ? *b.tune : detail::AutotuneBucket{});
  }
  return w.take();
}

std::vector<std::vector<std::byte>> GradientBuckets::redistribute_state(
    std::span<const std::vector<std::byte>> images, int new_ranks, const BucketOptions& options) {
  require(!options.hierarchical, "hierarchical",
          "redistribute_state cannot re-cut HierarchicalStates (elastic resume needs flat "
          "buckets: BucketOptions::hierarchical off)");
  require(!options.autotune.enabled, "autotune",
          "redistribute_state cannot re-cut the states of auto buckets yet (each bucket's "
          "setting is its candidate's)");
  require(!images.empty(), "images", "no images to redistribute");
  require(new_ranks >= 1, "new_ranks",
          [&] { return "must be >= 1, got " + std::to_string(new_ranks); });
  std::vector<SavedStates> saved;
  for (const std::vector<std::byte>& image : images) {
    saved.push_back(parse_image(image));
    require(!saved.back().hierarchical, "images", [&] {
      return "images[" + std::to_string(saved.size() - 1) +
             "] was saved with BucketOptions::hierarchical, whose states redistribute_state "
             "cannot re-cut";
    });
    require(!saved.back().autotuned, "images", [&] {
      return "images[" + std::to_string(saved.size() - 1) +
             "] was saved with BucketOptions::autotune, whose states redistribute_state cannot "
             "re-cut yet";
    });
  }
  const SavedStates& first = saved.front();
  for (std::size_t i = 1; i < saved.size(); ++i) {
    const bool same =
        saved[i].records.size() == first.records.size() && saved[i].guarded == first.guarded &&
        std::equal(first.records.begin(), first.records.end(), saved[i].records.begin(),
                   [](const auto& a, const auto& b) { return a.key == b.key; });
    require(same, "images", [&] {
      return "images[" + std::to_string(i) +
             "] holds other buckets than images[0] (another model, or the guardrail on in one "
             "and off in the other?)";
    });
  }
  const auto old_ranks = static_cast<int>(saved.size());
  std::vector<detail::ImageWriter> out;
  for (int j = 0; j < new_ranks; ++j) {
    out.push_back(start_image(first.records.size(), first.guarded, first.guard_steps));
  }
  for (std::size_t b = 0; b < first.records.size(); ++b) {
    std::vector<AllreduceState> states(saved.size());
    for (std::size_t i = 0; i < saved.size(); ++i) states[i].restore(saved[i].records[b].state);
    const detail::GuardrailBucket& guard = first.records[b].guard;
    AllreduceOptions allreduce = options.allreduce;
    std::size_t count = 0;
    for (std::size_t i = 0; i < saved.size(); ++i) {
      require(saved[i].records[b].guard.rung == guard.rung, "images", [&] {
        return "images[" + std::to_string(i) + "] has bucket " + std::to_string(b) +
               " on another guardrail rung than images[0]";
      });
      count = std::max(
          {count, states[i].worker_residual().size(), saved[i].records[b].guard.carry.size()});
    }
    // The states were kept with the rung's setting: they are re-cut with it. (Nothing held, e.g.
    // at the dense rung after its first step: unbound states, whose options do not matter.)
    if (guard.rung > 0 && count > 0) {
      const auto ladder = guardrail_ladder(options.allreduce.compression, count);
      require(guard.rung < ladder.size(), "images", [&] {
        return "bucket " + std::to_string(b) + "'s guardrail rung " + std::to_string(guard.rung) +
               " is past its ladder (" + std::to_string(ladder.size()) + " rungs)";
      });
      allreduce = with_setting(allreduce, ladder[guard.rung]);
    }
    const std::vector<AllreduceState> cut = redistribute_states(states, new_ranks, allreduce);
    // Carries move like worker residuals (elastic.hpp): old rank i's to new rank i * P' / P,
    // times P' / P under Average.
    std::vector<std::vector<float>> carries(static_cast<std::size_t>(new_ranks));
    for (int i = 0; i < old_ranks; ++i) {
      const std::vector<float>& c = saved[static_cast<std::size_t>(i)].records[b].guard.carry;
      if (c.empty()) continue;
      std::vector<float>& to = carries[static_cast<std::size_t>(i * new_ranks / old_ranks)];
      to.resize(c.size(), 0.0f);
      for (std::size_t e = 0; e < c.size(); ++e) to[e] += c[e];
    }
    if (options.allreduce.op == ReduceOp::Average && new_ranks != old_ranks) {
      const float factor = static_cast<float>(new_ranks) / static_cast<float>(old_ranks);
      for (auto& c : carries) {
        for (float& x : c) x *= factor;
      }
    }
    for (std::size_t j = 0; j < out.size(); ++j) {
      out[j].put(first.records[b].key);
      out[j].put_blob(cut[j].save());
      if (first.guarded) {
        detail::GuardrailBucket moved = guard;
        moved.carry = std::move(carries[j]);
        detail::guardrail_save(out[j], moved);
      }
    }
  }
  std::vector<std::vector<std::byte>> cut_images;
  for (detail::ImageWriter& w : out) cut_images.push_back(w.take());
  return cut_images;
}

void GradientBuckets::restore_state(std::span<const std::byte> image) {
  if (buckets_.empty()) freeze_layout();
  const SavedStates saved = parse_image(image);
  if (saved.hierarchical != (hierarchy_ != nullptr)) {
    throw Error(ErrorCode::Mismatch,
                std::string("GradientBuckets state image was saved with hierarchical ") +
                    (saved.hierarchical ? "on" : "off") +
                    " and these buckets have BucketOptions::hierarchical " +
                    (hierarchy_ ? "on" : "off") + ": resume in the mode it was saved in");
  }
  if (saved.autotuned != options_.autotune.enabled) {
    throw Error(ErrorCode::Mismatch,
                std::string("GradientBuckets state image was saved with autotune ") +
                    (saved.autotuned ? "on" : "off") +
                    " and these buckets have BucketOptions::autotune " +
                    (options_.autotune.enabled ? "on" : "off") +
                    ": resume with the compression it was saved with");
  }
  // Check everything before changing anything.
  std::vector<HierarchicalState> restored_hierarchical;
  std::vector<AllreduceState> restored;
  std::vector<detail::GuardrailBucket> guards;
  std::vector<detail::AutotuneBucket> tunes;
  std::vector<std::vector<compression::CompressionConfig>> ladders;
  for (const Bucket& b : buckets_) {
    restored.emplace_back();
    guards.emplace_back();
    tunes.emplace_back();
    ladders.push_back(b.ladder);
    restored_hierarchical.emplace_back();
    if (b.dense) continue;  // no residual (and images from before dense vectors have no bucket)
    const auto it = std::find_if(saved.records.begin(), saved.records.end(),
                                 [&](const SavedRecord& r) { return r.key == b.key; });
    const std::string& tensor = tensors_[b.tensors.front()].name;
    if (it == saved.records.end()) {
      throw Error(ErrorCode::Mismatch,
                  "GradientBuckets state image has no state for the bucket holding tensor '" +
                      tensor + "' (was the model changed?)");
    }
    if (hierarchy_) {
      HierarchicalState& h = restored_hierarchical.back();
      h.restore(it->state);
      const HostTopology& t = hierarchy_->topology();
      // Only what is the same on every rank, so that every rank refuses alike here: a state
      // saved at another local index (hosts regrouped) is refused by the allreduce's own
      // binding check, inside the agreement, on every rank at the next finish().
      const auto& bound = h.binding();
      if (bound && (bound->hosts != t.host_count() || bound->ranks_on_host != t.ranks_on_host() ||
                    bound->count != b.data.size())) {
        throw Error(ErrorCode::Mismatch,
                    "GradientBuckets state image: the bucket holding tensor '" + tensor +
                        "' was saved on another topology (" + std::to_string(bound->hosts) +
                        " hosts x " + std::to_string(bound->ranks_on_host) +
                        " ranks) or size; hierarchical "
                        "states resume on the hosts and ranks they were saved on");
      }
      continue;
    }
    restored.back().restore(it->state);
    const detail::GuardrailBucket& guard = it->guard;
    if (!b.guard) {
      if (guard.rung != 0 || !guard.carry.empty()) {
        throw Error(ErrorCode::Mismatch,
                    "GradientBuckets state image was saved with the guardrail on and the bucket "
                    "holding tensor '" +
                        tensor + "' off its configured setting: restore it with the guardrail on");
      }
      continue;
    }
    if (b.tune) {
      const detail::AutotuneBucket& tune = it->tune;
      if (tune.current >= candidates_.size() || tune.samples.size() != candidates_.size()) {
        throw Error(ErrorCode::Mismatch,
                    "GradientBuckets state image: the autotune record of the bucket holding "
                    "tensor '" +
                        tensor + "' was saved with " + std::to_string(tune.samples.size()) +
                        " candidates, these buckets have " + std::to_string(candidates_.size()));
      }
      tunes.back() = tune;
      ladders.back() = ladder_for(tune.current, b.data.size());
    }
    if (guard.rung >= ladders.back().size() ||
        (!guard.carry.empty() && guard.carry.size() != b.data.size())) {
      throw Error(ErrorCode::Mismatch,
                  "GradientBuckets state image: the guardrail record of the "
                  "bucket holding tensor '" +
                      tensor + "' does not fit its ladder or size");
    }
    guards.back() = guard;
  }
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    if (buckets_[i].hierarchical) *buckets_[i].hierarchical = std::move(restored_hierarchical[i]);
    *buckets_[i].state = std::move(restored[i]);
    if (buckets_[i].guard) *buckets_[i].guard = std::move(guards[i]);
    if (buckets_[i].tune) *buckets_[i].tune = std::move(tunes[i]);
    buckets_[i].ladder = std::move(ladders[i]);
  }
  guard_steps_ = guard_steps_before_ = saved.guarded ? saved.guard_steps : 0;
  auto_steps_ = auto_steps_before_ = saved.autotuned ? saved.auto_steps : 0;
  auto_check_ = true;      // the ranks' images could differ: the next finish() compares digests
  undo_possible_ = false;  // the copies from before the last step predate this image
}

}  // namespace frugal

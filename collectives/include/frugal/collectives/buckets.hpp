#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/collectives/autotune.hpp"
#include "frugal/collectives/guardrail.hpp"
#include "frugal/collectives/hierarchical.hpp"

namespace frugal {

namespace detail {
struct GuardrailBucket;
struct AutotuneBucket;
}  // namespace detail

struct BucketOptions {
  // Tensors are fused into buckets of about this many bytes (a tensor larger than it gets a
  // bucket of its own), as in PyTorch DDP and Horovod.
  std::size_t bucket_bytes = 25 * 1024 * 1024;
  // With a compression method, tensors registered as vectors (dims <= 1: biases, batch-norm
  // γ and β) travel uncompressed: fused into dense buckets of their own, reduced exactly, and
  // overlapped like the others (a dense bucket is placed in the launch order where it fills up,
  // or last). They are ~1% of a ResNet's elements, and their gradients' scale differs from the
  // weights' they would otherwise share a quantization scale or top-k threshold with (PowerSGD
  // does the same). Off: every tensor is compressed.
  bool dense_vectors = true;
  // What each bucket's allreduce does (method, parameters, error feedback, op, seed, timeout).
  // `state` and `stats` are ignored: every bucket keeps its own state. So is `segments`: every
  // bucket passes its own tensors' boundaries, so that no scale, norm or (under
  // compression.topk_scope = PerTensor) top-k selection covers two tensors. Each bucket's random
  // streams are seeded with compression::stream_seed(seed, the bucket's layout key), so that
  // buckets round independently and a run stays reproducible.
  AllreduceOptions allreduce;
  // The accuracy guardrail (frugal/collectives/guardrail.hpp): off by default. On, each
  // compressed bucket moves up and down its ladder of settings as its residual ratio says, and
  // every rank takes the same decisions: finish() adds one allreduce of 3 doubles per compressed
  // bucket plus 8 (the ranks' sums of their norms and a digest of the options and rungs) after
  // the buckets' own, in which ranks whose options or rungs differ get Mismatch. Needs
  // allreduce.error_feedback (the residual is the signal). C: frugal_options.guardrail;
  // Python: guardrail=.
  //
  // A change of setting keeps error feedback exact: the bucket's residuals (worker, and this
  // rank's two-phase server chunk, times P under Average) are flushed into a carry that is added
  // to the bucket's next input, which is what error feedback would have added, and the bucket
  // starts a fresh state (same step counter) for the new setting. The carry is kept through a
  // skipped or undone step and saved in checkpoints; the sum over ranks of residuals plus
  // carries is what the switch preserves.
  GuardrailOptions guardrail;
  // compression = auto (frugal/collectives/autotune.hpp): off by default. On, each compressed
  // bucket (every bucket but the dense-vector ones) tries the candidate settings online and keeps
  // the one whose allreduce costs least, identically on every rank; allreduce.compression.method
  // must be None and allreduce.error_feedback on (InvalidArgument naming `autotune` otherwise).
  // A change of candidate flushes the residuals into the guardrail's carry (see above), so it
  // loses no gradient mass; the guardrail, when enabled too, steps a bucket denser on top of its
  // candidate. Refused with InvalidArgument naming `hierarchical` from the options alone (the
  // hierarchical path is blocking and keeps no carry). save_state() writes images of version 4,
  // which restore only into auto buckets (Mismatch naming `autotune` either way round);
  // redistribute_state() refuses them and auto options by name.
  AutotuneOptions autotune;
  // Hierarchical reduction (frugal/collectives/hierarchical.hpp): every bucket goes through
  // hierarchical_allreduce on a Hierarchy this object owns: a dense reduce-scatter among the
  // ranks of each host, this rank's share allreduced across hosts with allreduce's options (the
  // compressed buckets with error feedback in a HierarchicalState per bucket, the dense ones
  // uncompressed), then a dense allgather within the host, so that a host sends 1/L of each
  // bucket between hosts (L ranks per host). The sub-communicators drive the communicator's
  // transport and must not run beside asynchronous collectives, so this path is blocking: the
  // buckets are reduced one after another, in bucket order, inside finish(), after backward.
  // It does not overlap backward.
  //
  // Works with it: NonFiniteAction::Skip and undo_last_step() (copies of the HierarchicalStates;
  // Skip covers NaN/Inf in the inputs, but a finite value beyond a 16-bit format's range, fp16 or
  // top-k's fp16 values, or a sum across hosts that overflows it, is InvalidArgument on every
  // rank instead of a skip: the inter-host step does not yet carry a skip back to the host),
  // save_state()/restore_state() (images of version 3, which hold the HierarchicalStates; an
  // image of the other mode is refused with Mismatch naming `hierarchical`), scale_residuals(),
  // allreduce_state(bucket) (the state of the share this rank carries across hosts). Refused
  // with InvalidArgument naming `hierarchical` and the other option, by the constructor from the
  // options alone (so on every rank alike, before anything is sent): the guardrail;
  // redistribute_state() (elastic resume) refuses hierarchical options and images.
  // last_step_wire_bytes() counts the inter-host steps' bytes (AllreduceStats of each bucket's
  // share, agreement blocks included) only, not the dense steps within a host.
  bool hierarchical = false;
  // The hosts, when `hierarchical`: empty discovers them in the constructor with
  // discover_host_topology (collective over the communicator; FRUGAL_HOST_ID names a rank's
  // host). Given, every rank must pass it alike (tests simulate hosts in one process with it).
  // Every host must hold the same number of ranks: InvalidArgument naming `topology` otherwise.
  std::optional<HostTopology> topology;
};

// Gradient fusion with overlap: register a model's tensors once, in the order backward produces
// their gradients; each step, mark them ready as they are produced. A bucket's (compressed)
// allreduce starts on the communicator's progress engine as soon as all its tensors are ready
// and every earlier bucket has started, so communication overlaps the rest of backward; finish()
// waits for all and writes the results back into the gradients. (Under
// BucketOptions::hierarchical, finish() reduces the buckets itself, one after another.)
//
// Every rank must register the same tensors in the same order. Error-feedback state lives per
// bucket, keyed by the bucket's layout (its tensors' names and sizes), and is saved and restored
// with save_state() / restore_state(). One thread drives an instance; the communicator must not
// run other collectives between the first mark_ready of a step and finish().
class GradientBuckets {
 public:
  // Throws InvalidArgument for options that do not combine (see BucketOptions). With
  // options.hierarchical and no options.topology, collective over `comm` (topology discovery).
  GradientBuckets(Communicator& comm, BucketOptions options = {});
  // Waits for allreduces still running (they use this object's buffers); errors are dropped.
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // Registers a tensor of `count` floats; returns its id. Only before the first mark_ready.
  // Throws InvalidArgument on a duplicate or empty name or a zero count. Without `dims` the
  // tensor counts as a matrix (compressed); with it, a tensor of dims <= 1 is a vector, which
  // BucketOptions::dense_vectors sends uncompressed.
  std::size_t add(std::string name, std::size_t count);
  std::size_t add(std::string name, std::size_t count, std::size_t dims);

  // Hands over tensor `id`'s gradient: it is copied into its bucket now, and finish() writes the
  // reduced result back into `grad`, which must stay valid until then. Throws InvalidArgument
  // on an unknown id, a size that differs from the registered one, or a second mark in a step.
  void mark_ready(std::size_t id, std::span<float> grad);
  void mark_ready(std::string_view name, std::span<float> grad);

  // Waits for every bucket and writes the results back. Throws InvalidArgument naming a tensor
  // that was not marked ready (after waiting for what was launched), or the first allreduce
  // error. Ready for the next step afterwards.
  void finish();

  // Skipped steps (allreduce.non_finite = NonFiniteAction::Skip). The whole step is skipped,
  // identically on every rank, when some rank's input to some bucket holds NaN or Inf (or, for a
  // quantizer, a value beyond its format's range after error feedback), or when some bucket's
  // reduced result holds NaN or Inf (a sum that overflowed; results are bit-identical on every
  // rank, so every rank decides alike without another message). Then finish() returns normally
  // and:
  //  - every gradient span handed to mark_ready keeps exactly the values it held then (this
  //    rank's own, unreduced gradient), in every bucket, skipped or not;
  //  - every bucket's error-feedback state (worker and server residuals, step counter, layout)
  //    is exactly what it was before the step's first mark_ready, so the next step computes
  //    what it would have computed had the skipped step never happened. No NaN or Inf reaches a
  //    residual, for any method (top-k included).
  // The buckets keep one copy of their state per step for this (about the size of the
  // residuals; only under Skip). Momentum or other optimizer state is the caller's: this class
  // holds none.
  bool last_step_skipped() const noexcept { return last_step_skipped_; }

  // The bytes this rank sent in the last finish()'s allreduces (AllreduceStats::wire_bytes_sent
  // summed over the buckets, agreement blocks included); 0 before the first finish().
  std::size_t last_step_wire_bytes() const noexcept { return last_step_wire_bytes_; }

  // Skips the last finished step after the fact, for a reason of the caller's (another
  // allreduce's NaN, a non-finite loss): every bucket's state goes back to what it was before
  // that step, as if last_step_skipped(). The gradients already hold the reduced values; the
  // caller discards them. Every rank must call it alike (it sends nothing). Only under
  // NonFiniteAction::Skip, once after a finish() that did not skip; else InvalidArgument.
  void undo_last_step();

  // Every bucket's AllreduceState::scale_residuals(factor) (and the copies kept for a skip or
  // undo_last_step, so that a later undo restores residuals in the new units). Call it between
  // steps, before the first mark_ready, with lr_prev / lr_now when the learning rate changes.
  // Throws InvalidArgument during a step or for a factor that is not finite and >= 0.
  void scale_residuals(float factor);
  // Bucket `bucket`'s error-feedback state (residuals, step counter), for diagnostics. Under
  // BucketOptions::hierarchical: the state of the share of the bucket this rank carries across
  // hosts (its residual covers that share only).
  const AllreduceState& allreduce_state(std::size_t bucket) const;

  // Guardrail: the changes of setting the last finish() decided (empty when it is off, or for
  // a skipped step), identical on every rank. They apply from the next step on.
  const std::vector<GuardrailEvent>& last_step_guardrail_events() const noexcept {
    return last_events_;
  }
  // Bucket `bucket`'s rung on its ladder (0: the configured setting; always 0 when the
  // guardrail is off or for a dense bucket) and the setting it compresses with at the next step.
  std::size_t bucket_rung(std::size_t bucket) const;
  compression::CompressionConfig bucket_setting(std::size_t bucket) const;
  // The smoothed ratio ||r|| / ||x|| the guardrail tracks for `bucket` (0 before its first
  // observation at the current rung).
  double bucket_residual_ratio(std::size_t bucket) const;
  // The residual mass the guardrail (or auto, BucketOptions::autotune) flushed from `bucket` at
  // its last change of setting and will add to the bucket's next input (empty when there is
  // none): part of what error feedback carries, beside allreduce_state(bucket)'s residuals.
  std::span<const float> guardrail_carry(std::size_t bucket) const;

  // Auto (BucketOptions::autotune): the candidates' switches and the trials' decisions of the
  // last finish() (empty when it is off, for a skipped step, or when nothing changed), identical
  // on every rank. They apply from the next step on.
  const std::vector<AutotuneEvent>& last_step_autotune_events() const noexcept {
    return last_autotune_events_;
  }
  // The candidates auto chooses from (the options' or the defaults), empty when it is off.
  const std::vector<compression::CompressionConfig>& autotune_candidates() const noexcept {
    return candidates_;
  }
  // The index in autotune_candidates() of the candidate bucket `bucket` runs at the next step;
  // InvalidArgument for a dense bucket or when auto is off.
  std::size_t bucket_candidate(std::size_t bucket) const;

  // The hosts the buckets are reduced over (BucketOptions::hierarchical), else null.
  const HostTopology* topology() const noexcept {
    return hierarchy_ ? &hierarchy_->topology() : nullptr;
  }

  std::size_t tensor_count() const noexcept { return tensors_.size(); }
  std::size_t bucket_count() const noexcept { return buckets_.size(); }
  // Whether bucket `bucket` is reduced uncompressed (BucketOptions::dense_vectors).
  bool bucket_is_dense(std::size_t bucket) const;
  // Valid once the layout is fixed (first mark_ready or bucket_count() > 0).
  std::size_t bucket_of(std::size_t id) const;
  // The bucket's asynchronous allreduce; Queued when it has not been launched this step (always,
  // under BucketOptions::hierarchical, whose buckets are reduced inside finish()).
  AllreduceHandle::State bucket_state(std::size_t bucket) const;

  std::vector<std::byte> save_state() const;
  // Throws InvalidArgument on a malformed image and Mismatch when a bucket of this layout has
  // no state in the image, when the image was saved with BucketOptions::hierarchical and this
  // object is flat or the reverse, likewise for BucketOptions::autotune (naming `autotune`; or
  // with another number of candidates), or (hierarchical) when a state was bound to another
  // topology or bucket size.
  void restore_state(std::span<const std::byte> image);
  // Elastic resume: the save_state() images of P ranks (images[i] from rank i, same model and
  // options) as images for a job of `new_ranks` ranks, each bucket's states re-cut by
  // redistribute_states (frugal/collectives/elastic.hpp, which states the rule) with
  // options.allreduce. Throws InvalidArgument on malformed or mismatched images, and naming
  // `hierarchical` for options.hierarchical or images saved with it (no redistribution of
  // HierarchicalStates exists).
  static std::vector<std::vector<std::byte>> redistribute_state(
      std::span<const std::vector<std::byte>> images, int new_ranks, const BucketOptions& options);

 private:
  struct Tensor {
    std::string name;
    std::size_t count = 0;
    bool dense = false;  // sent uncompressed (a vector under dense_vectors)
    std::size_t bucket = 0;
    std::size_t offset = 0;  // within the bucket
    std::span<float> grad;   // this step's gradient, empty until marked
  };
  struct Bucket {
    std::vector<std::size_t> tensors;
    std::vector<float> data;
    std::vector<std::size_t> segments;  // its tensors' element counts, in bucket order
    bool dense = false;                 // reduced uncompressed, without error feedback
    std::size_t pending = 0;            // tensors not yet marked this step
    std::uint64_t key = 0;              // layout hash, for checkpoints
    std::unique_ptr<AllreduceState> state;
    // Under Skip: `state` as it was before this step, for a step-wide skip. Copy-assigned at
    // each launch, so its residuals reuse their storage after the first step.
    std::unique_ptr<AllreduceState> before_step;
    // BucketOptions::hierarchical: the bucket's state instead of `state`, and its copy under Skip.
    std::unique_ptr<HierarchicalState> hierarchical;
    std::unique_ptr<HierarchicalState> hierarchical_before;
    AllreduceHandle handle;
    AllreduceStats stats;
    bool launched = false;
    // Guardrail (compressed buckets, when on): the ladder, the bookkeeping and, under Skip, its
    // copy from before the step; this step's local ||x||^2 and ||x + r_before||^2.
    std::vector<compression::CompressionConfig> ladder;
    std::unique_ptr<detail::GuardrailBucket> guard;
    std::unique_ptr<detail::GuardrailBucket> guard_before;
    double input_norm2 = 0, encoded_norm2 = 0;
    // Auto: the candidate bookkeeping and, under Skip, its copy and the ladder's from before the
    // step (a change of candidate rebuilds the ladder).
    std::unique_ptr<detail::AutotuneBucket> tune;
    std::unique_ptr<detail::AutotuneBucket> tune_before;
    std::vector<compression::CompressionConfig> ladder_before;
    // The wall time of this step's allreduce on the progress engine (written by the engine
    // thread, read after the handle's wait).
    double seconds = 0;
    compression::CompressionConfig ran;  // the setting this step's allreduce runs
  };

  void freeze_layout();
  void launch_ready_buckets();
  void wait_all_launched() noexcept;
  // Hierarchical: reduces every bucket in order (gradient_buckets_hierarchical.cpp); stops at
  // the first error, which it returns.
  std::exception_ptr reduce_hierarchically(bool& skipped);
  bool skips_non_finite() const noexcept {
    return options_.allreduce.non_finite == NonFiniteAction::Skip;
  }
  void restore_states_before_step() noexcept;
  bool guarding(const Bucket& b) const noexcept { return b.guard != nullptr; }
  AllreduceOptions options_for(const Bucket& b) const;
  void run_guardrail();
  void change_setting(Bucket& b);
  std::vector<compression::CompressionConfig> ladder_for(std::size_t candidate,
                                                         std::size_t count) const;
  void run_autotune();
  void switch_candidate(Bucket& b, std::size_t candidate);

  Communicator& comm_;
  BucketOptions options_;
  std::unique_ptr<Hierarchy> hierarchy_;  // BucketOptions::hierarchical
  std::vector<Tensor> tensors_;
  std::vector<Bucket> buckets_;
  std::size_t next_launch_ = 0;
  bool last_step_skipped_ = false;
  std::size_t last_step_wire_bytes_ = 0;
  bool undo_possible_ = false;  // under Skip, between a finish() that reduced and the next step
  // Guardrail: steps reduced so far (events' step numbers), and its value before the last step.
  std::uint64_t guard_steps_ = 0;
  std::uint64_t guard_steps_before_ = 0;
  std::vector<GuardrailEvent> last_events_;
  // Auto: the resolved candidates, its reduced steps (and their value before the last step),
  // whether the next finish() must check the ranks' digests, and the last step's events.
  std::vector<compression::CompressionConfig> candidates_;
  std::uint64_t auto_steps_ = 0;
  std::uint64_t auto_steps_before_ = 0;
  bool auto_check_ = true;
  std::vector<AutotuneEvent> last_autotune_events_;
};

}  // namespace frugal

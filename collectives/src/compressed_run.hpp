#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "collective_context.hpp"
#include "compressed_segments.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/compression/error_feedback.hpp"

namespace frugal::detail {

// One compressed allreduce in progress: the compressor, the error-feedback residuals, the random
// streams and the running statistics, shared by the compressed algorithms.
class CompressedRun {
 public:
  CompressedRun(CollectiveContext& ctx, const AllreduceOptions& options,
                const compression::Compressor& compressor, AllreduceAlgorithm algorithm,
                compression::ErrorFeedback* worker_feedback,
                compression::ErrorFeedback* server_feedback, std::uint64_t step,
                const PerTensorTopK* per_tensor = nullptr);

  CollectiveContext& ctx() noexcept { return ctx_; }
  const compression::Compressor& compressor() const noexcept { return compressor_; }
  const AllreduceOptions& options() const noexcept { return options_; }
  AllreduceStats& stats() noexcept { return stats_; }
  // The worker residual (null without error feedback): gTop-k gives dropped entries back to it.
  compression::ErrorFeedback* worker_feedback() noexcept { return worker_feedback_; }

  // `range` of the buffer cut into the pieces that are encoded as payloads of their own: at
  // the segment boundaries for methods with shared scales (splits_payloads), else `range`
  // whole. Every rank computes the same pieces from the agreed segments.
  std::vector<patterns::Range> pieces(patterns::Range range) const;

  // What encode_worker leaves in `values`.
  enum class Leaves : std::uint8_t {
    Reconstruction,  // what receivers reconstruct from the payload
    // Anything: the caller overwrites `values` with decoded payloads, so the encode need not
    // write a reconstruction (quantizers leave the input, top-k its reconstruction).
    Unspecified,
  };
  // Encodes `values` (elements [offset, offset + n) of the buffer) into `out` with worker-side
  // error feedback. Returns bytes. Per-tensor top-k takes the whole buffer (offset 0). Called after
  // agree(): under checks_early() every rank's input is known to be flag-free, so the encode keeps
  // no copy of the old residual.
  std::size_t encode_worker(std::span<float> values, std::span<std::byte> out, std::size_t offset,
                            Leaves leaves = Leaves::Reconstruction);
  // The same for the chunk a rank owns in the two-phase algorithm, with the server-side
  // residual and its own random stream. `values` is only read: every rank, the owner included,
  // decodes the payload. `offset` places the random stream in the buffer, `residual_offset`
  // the values in the owner's chunk (its server residual).
  std::size_t encode_server(std::span<const float> values, std::span<std::byte> out,
                            std::size_t offset, std::size_t residual_offset);

  // Waits that count as communication time.
  void wait(Request& request);
  void wait_all(std::vector<Request>& requests);
  // Waits for a receive and checks that it has the size every agreeing rank would send.
  void wait_exact(Request& request, std::size_t expected_bytes);
  // Waits for whichever of the receives `pending` completes first (CollectiveContext::wait_any),
  // checks its size against expected_bytes[i] for pending[i], and returns its index.
  std::size_t wait_any_exact(std::span<Request* const> pending,
                             std::span<const std::size_t> expected_bytes);
  // Keeps the transfers of `exchange` moving while this rank encodes (CollectiveContext::progress).
  void progress(CollectiveContext::Exchange& exchange);

  // The agreement every collective starts with, before any payload and before anything is
  // encoded: `terms` (with the compression terms, see plan_allreduce) merged along recursive
  // doubling, so a rank that disagrees on anything, or calls a dense allreduce or another
  // collective, makes every rank throw Mismatch. The block also carries this rank's scan_input
  // flags, OR-ed over the ranks, so every rank decides alike whether the step goes ahead: no
  // residual may change before that is known. Returns false when the step is skipped (buffer
  // untouched) and throws InvalidArgument under Error.
  bool agree(const AgreementTerms& terms);
  //
  // With NonFiniteAction Error or Skip, and under Zero or Default when the compressor's policy
  // is Error: a finite value out of the format's range (fp16 above 65504, an overflowing norm or
  // scale sum) would otherwise make encode throw on its rank only.
  bool checks_early() const noexcept { return checks_early_; }
  // Before agree(), when checks_early(): scans the compensated input (worker residual included)
  // for NaN/Inf and for values beyond the compressor's flag-free magnitude.
  void scan_input(std::span<const float> data);

  // When checks_early(), the two-phase owner's re-encode of its reduced chunk checks the same
  // bound first; beyond it, it sends a marker payload (flagged kNonFinite) instead, so that
  // every rank learns of it in the gather and calls throw_sum_overflow.
  bool is_overflow_marker(std::span<const std::byte> payload) const;
  [[noreturn]] void throw_sum_overflow(int owner, std::size_t begin, std::size_t end) const;

  // Accumulates the time spent in `work` into `seconds`.
  template <typename Work>
  void timed(double& seconds, Work&& work) {
    const auto start = Clock::now();
    work();
    seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }

  // Writes the statistics to options.stats, if requested.
  void publish();

 private:
  CollectiveContext& ctx_;
  const AllreduceOptions& options_;
  const compression::Compressor& compressor_;
  compression::ErrorFeedback* worker_feedback_;
  compression::ErrorFeedback* server_feedback_;
  std::uint64_t step_;
  const PerTensorTopK* per_tensor_;
  AllreduceStats stats_;
  // "fp16's range (|x| <= 65504)": what scan_input and the owner's re-encode check against.
  std::string range_text() const;
  float overflow_limit() const noexcept;

  bool checks_early_ = false;
  // What scan_input found in this rank's input.
  bool own_nan_or_inf_ = false;
  bool own_out_of_range_ = false;
  float own_worst_ = 0.0f;  // this rank's largest compensated |x|, when out of range
};

// The compressed algorithms; each leaves the result in `data` on every rank.
void compressed_two_phase(CompressedRun& run, std::span<float> data);
// Top-k's SparseAllgather and the quantizers' Allgather: one encode per rank, all payloads to all.
void compressed_allgather(CompressedRun& run, std::span<float> data);
void sparse_recursive_doubling(CompressedRun& run, std::span<float> data);

}  // namespace frugal::detail

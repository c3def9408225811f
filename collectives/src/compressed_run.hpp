#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "collective_context.hpp"
#include "collective_header.hpp"
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
                std::size_t count, compression::ErrorFeedback* worker_feedback,
                compression::ErrorFeedback* server_feedback, std::uint64_t step);

  CollectiveContext& ctx() noexcept { return ctx_; }
  const compression::Compressor& compressor() const noexcept { return compressor_; }
  const CollectiveHeader& header() const noexcept { return header_; }
  const AllreduceOptions& options() const noexcept { return options_; }
  AllreduceStats& stats() noexcept { return stats_; }

  // Encodes `values` (elements [offset, offset + n) of the buffer) into `out` with worker-side
  // error feedback; `values` is overwritten with what receivers reconstruct. Returns bytes.
  std::size_t encode_worker(std::span<float> values, std::span<std::byte> out, std::size_t offset);
  // The same for the chunk a rank owns in the two-phase algorithm, with the server-side
  // residual and its own random stream.
  std::size_t encode_server(std::span<float> values, std::span<std::byte> out, std::size_t offset);

  // Waits that count as communication time.
  void wait(Request& request);
  void wait_all(std::vector<Request>& requests);
  // Waits for a receive and checks that it has the size every agreeing rank would send.
  void wait_exact(Request& request, std::size_t expected_bytes);

  // Every rank sends its collective header to every other rank ahead of any payload, as a small
  // message of its own: it arrives even when the payloads cannot be matched, so every rank
  // learns of a disagreement and reports it as Mismatch. post_headers() starts the exchange
  // (call it first, then encode while the headers travel); check_headers() waits and compares.
  // With NonFiniteAction Error or Skip (checks_early()), call check_headers() before encoding:
  // no residual may change before every rank knows whether the step goes ahead. It returns false
  // when the step is skipped (buffer untouched) and throws InvalidArgument under Error.
  void post_headers();
  bool check_headers();
  //
  // checks_early() also holds under Zero when the compressor's policy is Error: a finite value out
  // of the format's range (fp16 above 65504, an overflowing norm or scale sum) would otherwise
  // make encode throw on its rank only.
  bool checks_early() const noexcept { return checks_early_; }
  // Before post_headers(), when checks_early(): scans the compensated input (worker residual
  // included) for NaN/Inf and for values beyond the compressor's flag-free magnitude, and puts
  // the result in this rank's header.
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
  CollectiveHeader header_;
  compression::ErrorFeedback* worker_feedback_;
  compression::ErrorFeedback* server_feedback_;
  std::uint64_t step_;
  AllreduceStats stats_;
  std::vector<std::byte> header_out_;
  std::vector<std::byte> headers_in_;
  std::vector<Request> header_recvs_;
  std::vector<Request> header_sends_;
  // "fp16's range (|x| <= 65504)": what scan_input and the owner's re-encode check against.
  std::string range_text() const;
  float overflow_limit() const noexcept;

  bool checks_early_ = false;
  float own_worst_ = 0.0f;  // this rank's largest compensated |x|, when scan_input flagged it
  bool headers_checked_ = false;
  bool proceed_ = true;
};

// The compressed algorithms; each leaves the result in `data` on every rank.
void compressed_two_phase(CompressedRun& run, std::span<float> data);
// Top-k's SparseAllgather and the quantizers' Allgather: one encode per rank, all payloads to all.
void compressed_allgather(CompressedRun& run, std::span<float> data);
void sparse_recursive_doubling(CompressedRun& run, std::span<float> data);

}  // namespace frugal::detail

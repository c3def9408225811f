#include "compressed_run.hpp"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

#include "agreement.hpp"
#include "frugal/compression/payload.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

CompressedRun::CompressedRun(CollectiveContext& ctx, const AllreduceOptions& options,
                             const compression::Compressor& compressor,
                             AllreduceAlgorithm algorithm,
                             compression::ErrorFeedback* worker_feedback,
                             compression::ErrorFeedback* server_feedback, std::uint64_t step,
                             const PerTensorTopK* per_tensor)
    : ctx_(ctx),
      options_(options),
      compressor_(compressor),
      worker_feedback_(worker_feedback),
      server_feedback_(server_feedback),
      step_(step),
      per_tensor_(per_tensor) {
  stats_.algorithm = algorithm;
  const bool policy_error = options.compression.non_finite == compression::NonFinitePolicy::Error;
  checks_early_ = options.non_finite == NonFiniteAction::Error ||
                  options.non_finite == NonFiniteAction::Skip ||
                  (options.non_finite == NonFiniteAction::Default && policy_error) ||
                  (options.non_finite == NonFiniteAction::Zero && policy_error);
}

std::size_t CompressedRun::encode_worker(std::span<float> values, std::span<std::byte> out,
                                         std::size_t offset, Leaves leaves) {
  compression::Rng rng(options_.seed, static_cast<std::uint64_t>(ctx_.rank()), step_, offset);
  // After a clean agreement no block can flag (see scan_input).
  const auto input =
      checks_early_ ? compression::FeedbackInput::FlagFree : compression::FeedbackInput::Unchecked;
  // Top-k computes its reconstruction anyway: `values` is the cheapest place for it.
  const bool apply =
      leaves == Leaves::Reconstruction || compressor_.method() == compression::Method::TopK;
  std::size_t bytes = 0;
  timed(stats_.encode_seconds, [&] {
    if (per_tensor_ != nullptr) {
      require(offset == 0, "offset", "per-tensor top-k encodes the whole buffer");
      bytes = per_tensor_->encode(values, out, rng, worker_feedback_, input);
    } else if (worker_feedback_ == nullptr) {
      bytes = apply ? compressor_.encode_apply(values, out, rng, values)
                    : compressor_.encode(values, out, rng);
    } else if (apply) {
      bytes = compression::encode_with_feedback(compressor_, *worker_feedback_, values, out, rng,
                                                values, offset, input);
    } else {
      bytes = compression::encode_payload_with_feedback(compressor_, *worker_feedback_, values, out,
                                                        rng, offset, input);
    }
  });
  return bytes;
}

std::vector<patterns::Range> CompressedRun::pieces(patterns::Range range) const {
  if (!splits_payloads(compressor_.method())) return {range};
  return segment_pieces(options_.segments, range);
}

std::size_t CompressedRun::encode_server(std::span<const float> values, std::span<std::byte> out,
                                         std::size_t offset, std::size_t residual_offset) {
  compression::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(ctx_.rank()),
                       step_, offset);
  std::size_t bytes = 0;
  if (checks_early_ && !(compression::max_compensated_magnitude(
                             values, server_feedback_, residual_offset) <= overflow_limit())) {
    // The sum of finite inputs can still leave the format (40000 + 40000 in fp16). Encoding it
    // would throw here alone; a payload of zeros flagged kNonFinite tells every rank instead,
    // and the server residual stays as it was.
    const std::vector<float> zeros(values.size(), 0.0f);
    bytes = compressor_.encode(zeros, out, rng);
    compression::PayloadHeader header = compression::read_header(out.first(bytes));
    header.flags |= compression::PayloadHeader::kNonFinite;
    compression::write_header(header, out);
    return bytes;
  }
  // Checked just above: the encode cannot flag.
  const auto input =
      checks_early_ ? compression::FeedbackInput::FlagFree : compression::FeedbackInput::Unchecked;
  timed(stats_.encode_seconds, [&] {
    if (server_feedback_ != nullptr) {
      // The server residual covers the owned chunk alone (`offset` places the rng).
      bytes = compression::encode_payload_with_feedback(compressor_, *server_feedback_, values, out,
                                                        rng, residual_offset, input);
    } else {
      bytes = compressor_.encode(values, out, rng);
    }
  });
  return bytes;
}

void CompressedRun::wait(Request& request) {
  timed(stats_.comm_seconds, [&] { ctx_.wait(request); });
}

void CompressedRun::wait_exact(Request& request, std::size_t expected_bytes) {
  timed(stats_.comm_seconds, [&] { ctx_.wait_recv(request, expected_bytes); });
}

std::size_t CompressedRun::wait_any_exact(std::span<Request* const> pending,
                                          std::span<const std::size_t> expected_bytes) {
  std::size_t i = 0;
  timed(stats_.comm_seconds, [&] { i = ctx_.wait_any(pending); });
  ctx_.check_recv(*pending[i], expected_bytes[i]);
  return i;
}

void CompressedRun::progress(CollectiveContext::Exchange& exchange) {
  timed(stats_.comm_seconds, [&] {
    ctx_.progress(exchange.recvs);
    ctx_.progress(exchange.sends);
  });
}

bool CompressedRun::agree(const AgreementTerms& terms) {
  CollectiveAgreement agreement(terms, own_nan_or_inf_, own_out_of_range_);
  if (ctx_.size() > 1) {
    timed(stats_.comm_seconds,
          [&] { agree_recursive_doubling(ctx_, agreement, {}, DType::Float32, 1); });
    agreement.check(ctx_);
  }
  // Flags are set only under checks_early(), which every rank computes alike from the agreed
  // action and policy.
  if (!agreement.non_finite() && !agreement.out_of_range()) return true;
  if (options_.non_finite == NonFiniteAction::Skip) {
    stats_.non_finite_skipped = true;
    return false;
  }
  std::string what;
  if (agreement.non_finite()) what = "NaN or Inf";
  if (agreement.out_of_range()) {
    what += (what.empty() ? "" : ", or ") + std::string("a value beyond ") + range_text() +
            " (after error feedback)";
  }
  std::string mine;
  if (own_nan_or_inf_) {
    mine = " (this one's does)";
  } else if (own_out_of_range_) {
    std::ostringstream worst;
    worst << std::setprecision(6) << own_worst_;
    mine = " (this one's does: |x| up to " + worst.str() + ")";
  }
  throw Error(ErrorCode::InvalidArgument, "non_finite: some rank's input holds " + what + mine +
                                              "; action " +
                                              std::string(to_string(options_.non_finite)) +
                                              ", nothing was reduced and no residual changed");
}

float CompressedRun::overflow_limit() const noexcept {
  // 0 means the compressor promises nothing short of Inf (top-k): only NaN/Inf flag there.
  const float bound = compressor_.flag_free_magnitude();
  return bound > 0.0f ? bound : std::numeric_limits<float>::max();
}

std::string CompressedRun::range_text() const {
  std::ostringstream text;
  text << compression::to_string(compressor_.method())
       << "'s range (|x| <= " << std::setprecision(6) << overflow_limit() << ")";
  return text.str();
}

void CompressedRun::scan_input(std::span<const float> data) {
  const float worst = compression::max_compensated_magnitude(data, worker_feedback_);
  own_nan_or_inf_ = false;
  own_out_of_range_ = false;
  if (worst <= overflow_limit()) return;
  if (!std::isfinite(worst) && has_non_finite(std::as_bytes(data), DType::Float32)) {
    own_nan_or_inf_ = true;
  } else {
    own_out_of_range_ = true;
    own_worst_ = worst;
  }
}

bool CompressedRun::is_overflow_marker(std::span<const std::byte> payload) const {
  return checks_early_ && compression::read_header(payload).non_finite();
}

void CompressedRun::throw_sum_overflow(int owner, std::size_t begin, std::size_t end) const {
  throw Error(ErrorCode::InvalidArgument,
              "non_finite: the sum of elements [" + std::to_string(begin) + ", " +
                  std::to_string(end) + "), reduced by rank " + std::to_string(owner) +
                  ", is beyond " + range_text() +
                  " (after error feedback) although every input was within it, so it cannot be "
                  "re-encoded; every rank throws, worker residuals have absorbed this step and "
                  "the buffer holds partial results");
}

void CompressedRun::wait_all(std::vector<Request>& requests) {
  timed(stats_.comm_seconds, [&] { ctx_.wait_all(std::span<Request>(requests)); });
}

void CompressedRun::publish() {
  stats_.wire_bytes_sent = ctx_.bytes_sent();
  if (options_.stats != nullptr) *options_.stats = stats_;
}

}  // namespace frugal::detail

#include "compressed_run.hpp"

#include <algorithm>
#include <optional>
#include <string>

#include "frugal/compression/rng.hpp"

namespace frugal::detail {

CompressedRun::CompressedRun(CollectiveContext& ctx, const AllreduceOptions& options,
                             const compression::Compressor& compressor,
                             AllreduceAlgorithm algorithm, std::size_t count,
                             compression::ErrorFeedback* worker_feedback,
                             compression::ErrorFeedback* server_feedback, std::uint64_t step)
    : ctx_(ctx),
      options_(options),
      compressor_(compressor),
      header_(CollectiveHeader::describe(options, algorithm, count, compressor.k_for(count))),
      worker_feedback_(worker_feedback),
      server_feedback_(server_feedback),
      step_(step) {
  stats_.algorithm = algorithm;
  checks_early_ = options.non_finite == NonFiniteAction::Error ||
                  options.non_finite == NonFiniteAction::Skip ||
                  (options.non_finite == NonFiniteAction::Default &&
                   options.compression.non_finite == compression::NonFinitePolicy::Error);
}

std::size_t CompressedRun::encode_worker(std::span<float> values, std::span<std::byte> out,
                                         std::size_t offset) {
  compression::Rng rng(options_.seed, static_cast<std::uint64_t>(ctx_.rank()), step_, offset);
  std::size_t bytes = 0;
  timed(stats_.encode_seconds, [&] {
    if (worker_feedback_ != nullptr) {
      bytes = compression::encode_with_feedback(compressor_, *worker_feedback_, values, out, rng,
                                                values, offset);
    } else {
      bytes = compressor_.encode_apply(values, out, rng, values);
    }
  });
  return bytes;
}

std::size_t CompressedRun::encode_server(std::span<float> values, std::span<std::byte> out,
                                         std::size_t offset) {
  compression::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(ctx_.rank()),
                       step_, offset);
  std::size_t bytes = 0;
  timed(stats_.encode_seconds, [&] {
    if (server_feedback_ != nullptr) {
      bytes = compression::encode_with_feedback(compressor_, *server_feedback_, values, out, rng,
                                                values);
    } else {
      bytes = compressor_.encode_apply(values, out, rng, values);
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

void CompressedRun::post_headers() {
  constexpr std::size_t kHead = CollectiveHeader::kSize;
  const int size = ctx_.size();
  const auto ranks = static_cast<std::size_t>(size);
  header_out_.resize(kHead);
  header_.write(header_out_);
  headers_in_.resize(kHead * ranks);
  CollectiveContext::Exchange e = ctx_.post_exchange(
      [&](int q) {
        return std::span(headers_in_).subspan(static_cast<std::size_t>(q) * kHead, kHead);
      },
      [&](int) { return std::span<const std::byte>(header_out_); });
  header_recvs_ = std::move(e.recvs);
  header_sends_ = std::move(e.sends);
}

bool CompressedRun::check_headers() {
  if (headers_checked_) return proceed_;
  headers_checked_ = true;
  constexpr std::size_t kHead = CollectiveHeader::kSize;
  bool non_finite = header_.non_finite != 0;
  // Every header is in before a disagreement is raised: each rank then sees at least one peer
  // that differs, so all throw Mismatch and none needs a failure notice, which would make a rank
  // still waiting for a slow peer's header throw PeerFailure instead.
  std::optional<Error> disagreement;
  for (std::size_t q = 0; q < header_recvs_.size(); ++q) {
    if (!header_recvs_[q].valid()) continue;
    wait(header_recvs_[q]);
    try {
      non_finite |= CollectiveHeader::check(
          std::span(headers_in_).subspan(q * kHead, std::min(kHead, header_recvs_[q].bytes())),
          header_, ctx_.rank(), static_cast<int>(q));
    } catch (const Error& e) {
      if (!disagreement) disagreement = e;
    }
  }
  wait_all(header_sends_);
  if (disagreement) {
    ctx_.communicator().fail(*disagreement, /*every_rank_knows=*/true);
    throw *disagreement;
  }
  if (non_finite && checks_early_) {
    if (options_.non_finite != NonFiniteAction::Skip) {
      throw Error(ErrorCode::InvalidArgument,
                  "non_finite: some rank's input holds NaN or Inf" +
                      std::string(header_.non_finite != 0 ? " (this one's does)" : "") +
                      "; policy error, nothing was reduced and no residual changed");
    }
    stats_.non_finite_skipped = true;
    proceed_ = false;
  }
  return proceed_;
}

void CompressedRun::wait_all(std::vector<Request>& requests) {
  timed(stats_.comm_seconds, [&] { ctx_.wait_all(std::span<Request>(requests)); });
}

void CompressedRun::publish() {
  stats_.wire_bytes_sent = ctx_.bytes_sent();
  if (options_.stats != nullptr) *options_.stats = stats_;
}

}  // namespace frugal::detail

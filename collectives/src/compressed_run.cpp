#include "compressed_run.hpp"

#include <algorithm>

#include "../patterns/ring.hpp"
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

Request CompressedRun::isend(int peer, std::span<const std::byte> data) {
  stats_.wire_bytes_sent += data.size();
  return ctx_.isend(peer, data);
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
  header_recvs_.resize(ranks);
  for (int s = 1; s < size; ++s) {
    const auto q = static_cast<std::size_t>(patterns::mod(ctx_.rank() - s, size));
    header_recvs_[q] =
        ctx_.irecv(static_cast<int>(q), std::span(headers_in_).subspan(q * kHead, kHead));
  }
  for (int s = 1; s < size; ++s) {
    header_sends_.push_back(isend(patterns::mod(ctx_.rank() + s, size), header_out_));
  }
}

void CompressedRun::check_headers() {
  constexpr std::size_t kHead = CollectiveHeader::kSize;
  for (std::size_t q = 0; q < header_recvs_.size(); ++q) {
    if (!header_recvs_[q].valid()) continue;
    wait(header_recvs_[q]);
    CollectiveHeader::check(
        std::span(headers_in_).subspan(q * kHead, std::min(kHead, header_recvs_[q].bytes())),
        header_, ctx_.rank(), static_cast<int>(q));
  }
  for (Request& r : header_sends_) wait(r);
}

void CompressedRun::publish() const {
  if (options_.stats != nullptr) *options_.stats = stats_;
}

}  // namespace frugal::detail

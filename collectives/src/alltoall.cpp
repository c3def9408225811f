#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/collectives.hpp"
#include "lazy_require.hpp"

namespace frugal {

namespace {

std::vector<std::size_t> offsets_of(std::span<const std::size_t> counts) {
  std::vector<std::size_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

void check_counts(std::span<const std::size_t> counts, std::size_t ranks, std::size_t buffer,
                  std::string_view counts_name, std::string_view buffer_name) {
  require(counts.size() == ranks, counts_name, [&] {
    return "needs one entry per rank (" + std::to_string(ranks) + "), got " +
           std::to_string(counts.size());
  });
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  require(total == buffer, buffer_name, [&] {
    return "size " + std::to_string(buffer) + " differs from the sum of " +
           std::string(counts_name) + " " + std::to_string(total);
  });
}

// alltoallv, agreeing on `terms` (alltoall's or alltoallv's) before any block moves.
void exchange_blocks(Communicator& comm, std::span<const std::byte> send,
                     std::span<const std::size_t> send_counts, std::span<std::byte> recv,
                     std::span<const std::size_t> recv_counts, const CollectiveOptions& options,
                     const detail::AgreementTerms& terms) {
  const auto ranks = static_cast<std::size_t>(comm.size());
  check_counts(send_counts, ranks, send.size(), "send_counts", "send");
  check_counts(recv_counts, ranks, recv.size(), "recv_counts", "recv");
  const auto rank = static_cast<std::size_t>(comm.rank());
  require(send_counts[rank] == recv_counts[rank], "recv_counts",
          "this rank's own block differs in size between send_counts and recv_counts");
  // Blocks arrive while others are still being sent: an in-place exchange would send
  // overwritten bytes.
  require(send.empty() || recv.empty() || send.data() + send.size() <= recv.data() ||
              recv.data() + recv.size() <= send.data(),
          "recv", "overlaps send; alltoall(v) does not work in place");
  const std::vector<std::size_t> send_at = offsets_of(send_counts);
  const std::vector<std::size_t> recv_at = offsets_of(recv_counts);
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    detail::agree(ctx, terms);
    using detail::CollectiveContext;
    CollectiveContext::Exchange e = ctx.post_exchange(
        [&](int q) {
          const auto from = static_cast<std::size_t>(q);
          return recv.subspan(recv_at[from], recv_counts[from]);
        },
        [&](int q) {
          const auto to = static_cast<std::size_t>(q);
          return send.subspan(send_at[to], send_counts[to]);
        });
    if (send_counts[rank] > 0) {
      std::memmove(recv.data() + recv_at[rank], send.data() + send_at[rank], send_counts[rank]);
    }
    for (std::size_t from = 0; from < ranks; ++from) {
      if (from != rank) ctx.wait_recv(e.recvs[from], recv_counts[from]);
    }
    ctx.wait_all(std::span<Request>(e.sends));
  });
}

}  // namespace

void alltoallv(Communicator& comm, std::span<const std::byte> send,
               std::span<const std::size_t> send_counts, std::span<std::byte> recv,
               std::span<const std::size_t> recv_counts, const CollectiveOptions& options) {
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Alltoallv;
  // Sized checks first: pair_digest reads one entry per rank.
  if (send_counts.size() == static_cast<std::size_t>(comm.size()) &&
      recv_counts.size() == send_counts.size()) {
    terms.param = detail::pair_digest(comm.rank(), send_counts, recv_counts);
  }
  exchange_blocks(comm, send, send_counts, recv, recv_counts, options, terms);
}

void alltoall(Communicator& comm, std::span<const std::byte> send, std::span<std::byte> recv,
              const CollectiveOptions& options) {
  const auto ranks = static_cast<std::size_t>(comm.size());
  require(send.size() == recv.size(), "recv", [&] {
    return "size " + std::to_string(recv.size()) + " differs from send size " +
           std::to_string(send.size());
  });
  require(send.size() % ranks == 0, "send", [&] {
    return "size " + std::to_string(send.size()) + " is not a multiple of the " +
           std::to_string(ranks) + " ranks";
  });
  const std::vector<std::size_t> counts(ranks, send.size() / ranks);
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Alltoall;
  terms.count = send.size() / ranks;
  exchange_blocks(comm, send, counts, recv, counts, options, terms);
}

}  // namespace frugal

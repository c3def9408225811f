#include <cstring>
#include <numeric>
#include <string>

#include "../patterns/ring.hpp"
#include "agreement.hpp"
#include "frugal/collectives/collectives.hpp"
#include "lazy_require.hpp"
#include "ring_pipeline.hpp"

namespace frugal {

namespace {

// allgatherv, agreeing on `terms` (allgather's or allgatherv's) before the ring.
void gather_ring(Communicator& comm, std::span<const std::byte> mine, std::span<std::byte> out,
                 std::span<const std::size_t> counts, const CollectiveOptions& options,
                 const detail::AgreementTerms& terms) {
  const auto size = static_cast<std::size_t>(comm.size());
  const auto rank = static_cast<std::size_t>(comm.rank());
  require(counts.size() == size, "counts", [&] {
    return "needs one entry per rank (" + std::to_string(size) + "), got " +
           std::to_string(counts.size());
  });
  require(mine.size() == counts[rank], "mine", [&] {
    return "size " + std::to_string(mine.size()) + " differs from counts[" + std::to_string(rank) +
           "] = " + std::to_string(counts[rank]);
  });
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  require(out.size() == total, "out", [&] {
    return "size " + std::to_string(out.size()) + " differs from the sum of counts " +
           std::to_string(total);
  });

  // `mine` may be this rank's own block of `out` (in place), nothing else of it: the ring
  // overwrites the other blocks while `mine` is still being read.
  const std::byte* own =
      out.data() + std::accumulate(counts.begin(),
                                   counts.begin() + static_cast<std::ptrdiff_t>(rank),
                                   std::size_t{0});
  require(mine.empty() || mine.data() == own || mine.data() + mine.size() <= out.data() ||
              out.data() + out.size() <= mine.data(),
          "mine", "overlaps out other than as this rank's own block (the in-place form)");
  detail::RingPlan plan;
  plan.buffer = out;
  plan.blocks.resize(size);
  std::size_t offset = 0;
  for (std::size_t i = 0; i < size; ++i) {
    plan.blocks[i] = {offset, counts[i]};
    offset += counts[i];
  }
  plan.first_step = patterns::ring_reduce_steps(comm.size());
  plan.last_step = patterns::ring_total_steps(comm.size());
  if (!mine.empty() && out.data() + plan.blocks[rank].offset != mine.data()) {
    std::memmove(out.data() + plan.blocks[rank].offset, mine.data(), mine.size());
  }
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    detail::agree(ctx, terms);
    detail::run_ring(ctx, plan);
  });
}

}  // namespace

void allgatherv(Communicator& comm, std::span<const std::byte> mine, std::span<std::byte> out,
                std::span<const std::size_t> counts, const CollectiveOptions& options) {
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Allgatherv;
  terms.count = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  terms.param = detail::counts_digest(counts);
  gather_ring(comm, mine, out, counts, options, terms);
}

void allgather(Communicator& comm, std::span<const std::byte> mine, std::span<std::byte> out,
               const CollectiveOptions& options) {
  const std::vector<std::size_t> counts(static_cast<std::size_t>(comm.size()), mine.size());
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Allgather;
  terms.count = mine.size();
  gather_ring(comm, mine, out, counts, options, terms);
}

}  // namespace frugal

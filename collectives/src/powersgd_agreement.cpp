#include "powersgd_agreement.hpp"

#include <array>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

constexpr std::size_t kTerms = 10;
constexpr std::size_t kBytes = 8;
constexpr std::size_t kNonFiniteAt = kTerms * kBytes * 2;
constexpr std::size_t kStateAt = kNonFiniteAt + 1;
constexpr std::size_t kSlots = kStateAt + 1;

constexpr std::array<const char*, kTerms> kNames = {
    "number of tensors",
    "tensor shapes",
    "rank r",
    "op",
    "error_feedback",
    "min_compression_rate",
    "start_iter",
    "seed",
    "non_finite action",
    "state's step counter (a state restored from another step?)"};

std::array<std::uint64_t, kTerms> values(const PowerSgdTerms& t) {
  return {t.tensors,    t.shapes_digest,  t.rank,
          t.op,         t.error_feedback, t.min_compression_rate_bits,
          t.start_iter, t.seed,           t.non_finite_action,
          t.step};
}

[[noreturn]] void disagree(Communicator& comm, const std::string& text) {
  const Error error(ErrorCode::Mismatch,
                    "rank " + std::to_string(comm.rank()) + ": powersgd_allreduce: " + text);
  // Every rank reaches the same verdict from the same sums: no notice to the peers (see
  // Communicator::fail).
  comm.fail(error, /*every_rank_knows=*/true);
  throw error;
}

}  // namespace

PowerSgdVerdict powersgd_agree(Communicator& comm, const PowerSgdTerms& terms, bool non_finite,
                               const std::string& state_change, const CollectiveOptions& options,
                               std::size_t& bytes_sent) {
  const std::array<std::uint64_t, kTerms> mine = values(terms);
  std::vector<double> sums(kSlots, 0.0);
  for (std::size_t f = 0; f < kTerms; ++f) {
    for (std::size_t b = 0; b < kBytes; ++b) {
      const auto x = static_cast<double>((mine[f] >> (8 * b)) & 0xff);
      sums[2 * (f * kBytes + b)] = x;
      sums[2 * (f * kBytes + b) + 1] = x * x;
    }
  }
  sums[kNonFiniteAt] = non_finite ? 1.0 : 0.0;
  sums[kStateAt] = state_change.empty() ? 0.0 : 1.0;
  if (comm.size() > 1) {
    AllreduceOptions reduce;
    static_cast<CollectiveOptions&>(reduce) = options;
    reduce.op = ReduceOp::Sum;
    AllreduceStats stats;
    reduce.stats = &stats;
    allreduce(comm, std::span<double>(sums), reduce);
    bytes_sent += stats.wire_bytes_sent;
  }
  const auto ranks = static_cast<double>(comm.size());
  for (std::size_t f = 0; f < kTerms; ++f) {
    for (std::size_t b = 0; b < kBytes; ++b) {
      const double sum = sums[2 * (f * kBytes + b)];
      const double squares = sums[2 * (f * kBytes + b) + 1];
      if (ranks * squares != sum * sum) {
        disagree(comm, std::string("ranks disagree on the ") + kNames[f] +
                           " (this rank: " + std::to_string(mine[f]) + ")");
      }
    }
  }
  if (sums[kStateAt] != 0.0) {
    if (!state_change.empty()) {
      disagree(comm, "this rank's PowerSgdState is bound to another layout; this call changes " +
                         state_change +
                         " (its Q's and residuals mean nothing there: one state per tensor "
                         "list; reset() to reuse)");
    }
    disagree(comm, "the PowerSgdState of " + std::to_string(static_cast<long>(sums[kStateAt])) +
                       " other rank(s) is bound to another layout (see their message)");
  }
  return PowerSgdVerdict{sums[kNonFiniteAt] != 0.0};
}

}  // namespace frugal::detail

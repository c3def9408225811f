#include "powersgd_agreement.hpp"

#include <array>
#include <string>

#include "frugal/error.hpp"
#include "term_agreement.hpp"

namespace frugal::detail {

namespace {

constexpr std::size_t kTerms = 10;

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
  const std::array<bool, 2> flags = {non_finite, !state_change.empty()};
  const TermVote vote = vote_on_terms(comm, mine, flags, options, &bytes_sent);
  if (vote.differing && *vote.differing != TermVote::kUnnamed) {
    const std::size_t f = *vote.differing;
    disagree(comm, std::string("ranks disagree on the ") + kNames[f] +
                       " (this rank: " + std::to_string(mine[f]) + ")");
  }
  if (vote.differing) {
    std::string all;
    for (const char* name : kNames) all += (all.empty() ? "" : ", ") + std::string(name);
    disagree(comm, "ranks disagree on one of: " + all);
  }
  if (vote.raised[1] != 0) {
    if (!state_change.empty()) {
      disagree(comm, "this rank's PowerSgdState is bound to another layout; this call changes " +
                         state_change +
                         " (its Q's and residuals mean nothing there: one state per tensor "
                         "list; reset() to reuse)");
    }
    disagree(comm, "the PowerSgdState of " + std::to_string(vote.raised[1]) +
                       " other rank(s) is bound to another layout (see their message)");
  }
  return PowerSgdVerdict{vote.raised[0] != 0};
}

}  // namespace frugal::detail

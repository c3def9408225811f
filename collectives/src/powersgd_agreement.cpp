#include "powersgd_agreement.hpp"

#include <array>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

constexpr std::size_t kTerms = 10;
// Slots: the digest of all terms (8 bytes), then one byte of each term's own hash (to name the
// term that differs), each as (x, x^2); then the two counts.
constexpr std::size_t kDigestBytes = 8;
constexpr std::size_t kTermAt = 2 * kDigestBytes;
constexpr std::size_t kNonFiniteAt = kTermAt + 2 * kTerms;
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

std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

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
  const auto put = [&](std::size_t at, std::uint64_t byte) {
    const auto x = static_cast<double>(byte & 0xff);
    sums[at] = x;
    sums[at + 1] = x * x;
  };
  std::uint64_t digest = 0x504f574552534744ULL;  // "POWERSGD"
  for (std::size_t f = 0; f < kTerms; ++f) {
    digest = mix(digest + 0x9e3779b97f4a7c15ULL + mine[f]);
    put(kTermAt + 2 * f, mix(mine[f] + f));
  }
  for (std::size_t b = 0; b < kDigestBytes; ++b) put(2 * b, digest >> (8 * b));
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
  const auto agree_at = [&](std::size_t at) { return ranks * sums[at + 1] == sums[at] * sums[at]; };
  bool digests_agree = true;
  for (std::size_t b = 0; b < kDigestBytes; ++b) digests_agree = digests_agree && agree_at(2 * b);
  for (std::size_t f = 0; f < kTerms; ++f) {
    if (!agree_at(kTermAt + 2 * f)) {
      disagree(comm, std::string("ranks disagree on the ") + kNames[f] +
                         " (this rank: " + std::to_string(mine[f]) + ")");
    }
  }
  if (!digests_agree) {
    // Every term's byte matched by chance (2^-8 each): the digest still tells.
    std::string all;
    for (const char* name : kNames) all += (all.empty() ? "" : ", ") + std::string(name);
    disagree(comm, "ranks disagree on one of: " + all);
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

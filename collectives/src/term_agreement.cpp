#include "term_agreement.hpp"

#include <cmath>
#include <memory>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

constexpr std::size_t kDigestBytes = 8;

std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::uint64_t digest_of(std::span<const std::uint64_t> values) noexcept {
  std::uint64_t h = mix(values.size());
  for (const std::uint64_t v : values) h = mix(h + 0x9e3779b97f4a7c15ULL + v);
  return h;
}

TermVote vote_on_terms(Communicator& comm, std::span<const std::uint64_t> terms,
                       std::span<const bool> flags, const CollectiveOptions& options,
                       std::size_t* bytes_sent) {
  // Slots: the digest's bytes, then one byte per term, each as (x, x^2); then the flags.
  const std::size_t term_at = 2 * kDigestBytes;
  const std::size_t flag_at = term_at + 2 * terms.size();
  std::vector<double> sums(flag_at + flags.size(), 0.0);
  const auto put = [&](std::size_t at, std::uint64_t byte) {
    const auto x = static_cast<double>(byte & 0xff);
    sums[at] = x;
    sums[at + 1] = x * x;
  };
  const std::uint64_t digest = digest_of(terms);
  for (std::size_t f = 0; f < terms.size(); ++f) put(term_at + 2 * f, mix(terms[f] + f));
  for (std::size_t b = 0; b < kDigestBytes; ++b) put(2 * b, digest >> (8 * b));
  for (std::size_t i = 0; i < flags.size(); ++i) sums[flag_at + i] = flags[i] ? 1.0 : 0.0;
  if (comm.size() > 1) {
    AllreduceOptions reduce;
    static_cast<CollectiveOptions&>(reduce) = options;
    reduce.op = ReduceOp::Sum;
    AllreduceStats stats;
    reduce.stats = &stats;
    allreduce(comm, std::span<double>(sums), reduce);
    if (bytes_sent != nullptr) *bytes_sent += stats.wire_bytes_sent;
  }
  const auto ranks = static_cast<double>(comm.size());
  const auto agree_at = [&](std::size_t at) { return ranks * sums[at + 1] == sums[at] * sums[at]; };
  TermVote vote;
  for (std::size_t f = 0; f < terms.size() && !vote.differing; ++f) {
    if (!agree_at(term_at + 2 * f)) vote.differing = f;
  }
  for (std::size_t b = 0; b < kDigestBytes && !vote.differing; ++b) {
    if (!agree_at(2 * b)) vote.differing = TermVote::kUnnamed;
  }
  for (std::size_t i = 0; i < flags.size(); ++i) {
    // Each rank adds 0 or 1. Anything else (NaN, a fraction, more than the ranks) came from a
    // corrupt peer: a disagreement, not a count (casting NaN to an integer is undefined).
    const double count = sums[flag_at + i];
    if (count >= 0.0 && count <= ranks && count == std::floor(count)) {
      vote.raised.push_back(static_cast<std::uint64_t>(count));
    } else {
      vote.raised.push_back(0);
      if (!vote.differing) vote.differing = TermVote::kUnnamed;
    }
  }
  return vote;
}

void agree_on_options(Communicator& comm, std::span<const std::uint64_t> terms,
                      std::span<const char* const> term_names,
                      std::span<const std::string_view> problem_names, const OptionProblem& problem,
                      const CollectiveOptions& options, std::string_view who,
                      std::string_view unnamed) {
  const auto flags = std::make_unique<bool[]>(problem_names.size());
  bool known = problem.parameter.empty();
  for (std::size_t i = 0; i < problem_names.size(); ++i) {
    flags[i] = problem.parameter == problem_names[i];
    known = known || flags[i];
  }
  if (!known) {
    throw Error(ErrorCode::Internal, std::string(who) + ": unknown parameter " + problem.parameter);
  }
  const TermVote vote =
      vote_on_terms(comm, terms, std::span<const bool>(flags.get(), problem_names.size()), options);
  // Every rank holds the same sums, so every rank throws the same kind of error.
  if (!problem.parameter.empty()) require(false, problem.parameter, problem.why);
  for (std::size_t i = 0; i < problem_names.size(); ++i) {
    if (vote.raised[i] != 0) {
      require(false, problem_names[i],
              "out of range on " + std::to_string(vote.raised[i]) + " other rank(s)");
    }
  }
  if (vote.differing) {
    const std::string what = *vote.differing == TermVote::kUnnamed
                                 ? std::string(unnamed)
                                 : std::string(term_names[*vote.differing]);
    throw Error(ErrorCode::Mismatch, std::string(who) + ": ranks disagree on " + what);
  }
}

}  // namespace frugal::detail

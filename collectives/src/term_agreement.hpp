#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"

namespace frugal::detail {

// A 64-bit digest of a list of numbers (its length included), as vote_on_terms digests terms.
std::uint64_t digest_of(std::span<const std::uint64_t> values) noexcept;

// What the ranks found out in vote_on_terms.
struct TermVote {
  // The first term some rank holds another value of than the others; kUnnamed when only the
  // digest tells (every term's byte matched by chance, 2^-8 each); nullopt when all agree.
  static constexpr std::size_t kUnnamed = static_cast<std::size_t>(-1);
  std::optional<std::size_t> differing;
  // Per flag: how many ranks raised it.
  std::vector<std::uint64_t> raised;
};

// The agreement of the calls that carry their own terms (PowerSGD, BMUF): every rank puts in
// the same number of 64-bit terms and flags, and learns whether all ranks hold the same terms
// (naming the first that differs) and how many ranks raised each flag. One small float64
// allreduce (so that allreduce's own agreement on count and order applies too), whose size
// does not grow with the number of ranks: a 64-bit digest of all the terms and one byte of a
// hash of each term, every byte x as (x, x^2); the ranks agree on a byte exactly when
// ranks * sum(x^2) == sum(x)^2 (Cauchy-Schwarz), sums that are exact in a double below 370 000
// ranks. Every rank reaches the same verdict from the same sums. `bytes_sent`, if set, grows by
// the bytes this rank sent.
TermVote vote_on_terms(Communicator& comm, std::span<const std::uint64_t> terms,
                       std::span<const bool> flags, const CollectiveOptions& options,
                       std::size_t* bytes_sent = nullptr);

// A rank's own finding about a call's arguments: the first parameter out of range and why; an
// empty name when everything is valid.
struct OptionProblem {
  std::string parameter;
  std::string why;
};

// One vote_on_terms on a call's options, with one flag per name of `problem_names` (every
// parameter a problem may name; another name is Internal), then the same error on every rank:
// InvalidArgument naming this rank's own problem; else InvalidArgument naming each parameter
// other ranks found out of range; else Mismatch "<who>: ranks disagree on <term_names[i] of the
// first differing term, or `unnamed` when only the digest tells>".
void agree_on_options(Communicator& comm, std::span<const std::uint64_t> terms,
                      std::span<const char* const> term_names,
                      std::span<const std::string_view> problem_names, const OptionProblem& problem,
                      const CollectiveOptions& options, std::string_view who,
                      std::string_view unnamed);

}  // namespace frugal::detail

#include "frugal/collectives/allreduce.hpp"

#include <cstring>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "algorithms.hpp"
#include "allreduce_plan.hpp"
#include "collective_context.hpp"
#include "compressed_allreduce.hpp"
#include "reduce_kernels.hpp"
#include "refusal.hpp"

namespace frugal {

namespace {

// Recursive doubling carries the agreement block inline only while [block | data] stays an
// eager-sized message. A rank whose peers disagree on the count (or call compressed, which sends
// the block alone) may receive a longer message than it posted for; Open MPI 4.1 corrupts the
// receiver's heap when such a truncated message went by rendezvous (seen over shared memory
// from 8 KiB on), so larger messages first agree with the block alone.
constexpr std::size_t kAgreementInlineMaxBytes = 2048;

}  // namespace

std::string_view to_string(NonFiniteAction action) noexcept {
  return enum_name(action);
}

std::optional<NonFiniteAction> parse_non_finite_action(std::string_view text) noexcept {
  return parse_enum<NonFiniteAction>(text);
}

void allreduce(Communicator& comm, std::span<std::byte> data, DType dtype,
               const AllreduceOptions& options) {
  // Refused arguments are refused on every rank (refusal.hpp): the peers are already agreeing.
  detail::AgreementTerms allreduce_terms;
  allreduce_terms.kind = detail::CollectiveKind::Allreduce;
  allreduce_terms.count = data.size();
  detail::AllreducePlan plan;
  detail::refusing(comm, options, allreduce_terms,
                   [&] { plan = detail::plan_allreduce(comm, data.size(), dtype, options); });
  if (plan.compressed) {
    const std::span<float> values(reinterpret_cast<float*>(data.data()), data.size() / 4);
    detail::compressed_allreduce(comm, values, options, plan);
    return;
  }
  const AllreduceAlgorithm algorithm = plan.algorithm;
  const NonFiniteAction action = options.non_finite;
  const int divisor = plan.divisor;
  const auto start = Clock::now();
  AllreduceStats stats;
  stats.algorithm = algorithm;
  if (action == NonFiniteAction::Zero)
    stats.non_finite_zeroed = detail::zero_non_finite(data, dtype);
  const bool checked = action == NonFiniteAction::Error || action == NonFiniteAction::Skip;
  const bool non_finite = checked && detail::has_non_finite(data, dtype);
  // Recursive doubling reduces while it agrees, so the input is kept for Error and Skip.
  std::vector<std::byte> input;
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    detail::CollectiveAgreement agreement(plan.terms, non_finite);
    // The ranks agreed on the action, so only a corrupt block reports NaN/Inf under one that
    // does not look for them (and this rank kept no input to restore).
    const auto check_non_finite = [&] {
      if (agreement.non_finite() && !checked) {
        throw Error(ErrorCode::Mismatch, "rank " + std::to_string(ctx.rank()) +
                                             ": a peer reported NaN/Inf under non_finite " +
                                             std::string(to_string(action)) +
                                             ", which does not look for them (corrupt message?)");
      }
    };
    if (ctx.size() == 1) {
      if (!non_finite && divisor > 1) detail::divide(data, dtype, divisor);
    } else if (algorithm == AllreduceAlgorithm::RecursiveDoubling &&
               data.size() <= kAgreementInlineMaxBytes) {
      if (checked) input.assign(data.begin(), data.end());
      detail::agree_recursive_doubling(ctx, agreement, data, dtype, divisor);
      agreement.check(ctx);
      check_non_finite();
      if (agreement.non_finite()) std::memcpy(data.data(), input.data(), data.size());
    } else {
      // A block-only exchange ahead of the payload: a few microseconds against the >= 2 KiB
      // messages these carry. Recursive doubling above the inline limit lands here as well.
      detail::agree_recursive_doubling(ctx, agreement, {}, dtype, 1);
      agreement.check(ctx);
      check_non_finite();
      if (!agreement.non_finite()) {
        if (algorithm == AllreduceAlgorithm::Ring) {
          detail::allreduce_ring(ctx, data, dtype, divisor);
        } else if (algorithm == AllreduceAlgorithm::RecursiveDoubling) {
          detail::allreduce_recursive_doubling(ctx, data, dtype, divisor);
        } else {
          detail::allreduce_rabenseifner(ctx, data, dtype, divisor);
        }
      }
    }
    // Dense algorithms reduce while they communicate: all of their time counts as comm.
    stats.comm_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    stats.wire_bytes_sent = ctx.bytes_sent();
    if (agreement.non_finite()) {
      if (action == NonFiniteAction::Error) {
        throw Error(ErrorCode::InvalidArgument,
                    "non_finite: some rank's input holds NaN or Inf" +
                        std::string(non_finite ? " (this one's does)" : "") +
                        "; policy error, nothing was reduced");
      }
      stats.non_finite_skipped = true;
    }
  });
  if (options.stats != nullptr) *options.stats = stats;
}

}  // namespace frugal

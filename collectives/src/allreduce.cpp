#include "frugal/collectives/allreduce.hpp"

#include <cstring>
#include <string>
#include <vector>

#include "../patterns/recursive_doubling.hpp"
#include "agreement.hpp"
#include "algorithms.hpp"
#include "collective_context.hpp"
#include "compressed_allreduce.hpp"
#include "reduce_kernels.hpp"

namespace frugal {

namespace {

// Recursive doubling carries the agreement block inline only while [block | data] stays an
// eager-sized message. A rank whose peers disagree on the count (or call compressed, which sends
// the block alone) may receive a longer message than it posted for; Open MPI 4.1 corrupts the
// receiver's heap when such a truncated message went by rendezvous (seen over shared memory
// from 8 KiB on), so larger messages first agree with the block alone.
constexpr std::size_t kAgreementInlineMaxBytes = 2048;

}  // namespace

std::string_view to_string(AllreduceAlgorithm algorithm) noexcept {
  switch (algorithm) {
    case AllreduceAlgorithm::Auto:
      return "auto";
    case AllreduceAlgorithm::Ring:
      return "ring";
    case AllreduceAlgorithm::RecursiveDoubling:
      return "recursive_doubling";
    case AllreduceAlgorithm::Rabenseifner:
      return "rabenseifner";
    case AllreduceAlgorithm::TwoPhase:
      return "two_phase";
    case AllreduceAlgorithm::SparseAllgather:
      return "sparse_allgather";
    case AllreduceAlgorithm::SparseRecursiveDoubling:
      return "sparse_rd";
    case AllreduceAlgorithm::Allgather:
      return "allgather";
  }
  return "unknown";
}

std::string_view to_string(NonFiniteAction action) noexcept {
  switch (action) {
    case NonFiniteAction::Default:
      return "default";
    case NonFiniteAction::Error:
      return "error";
    case NonFiniteAction::Skip:
      return "skip";
    case NonFiniteAction::Zero:
      return "zero";
  }
  return "unknown";
}

std::optional<NonFiniteAction> parse_non_finite_action(std::string_view text) noexcept {
  if (text == "default") return NonFiniteAction::Default;
  if (text == "error") return NonFiniteAction::Error;
  if (text == "skip") return NonFiniteAction::Skip;
  if (text == "zero") return NonFiniteAction::Zero;
  return std::nullopt;
}

std::optional<AllreduceAlgorithm> parse_allreduce_algorithm(std::string_view text) noexcept {
  if (text == "auto") return AllreduceAlgorithm::Auto;
  if (text == "ring") return AllreduceAlgorithm::Ring;
  if (text == "recursive_doubling" || text == "rd") return AllreduceAlgorithm::RecursiveDoubling;
  if (text == "rabenseifner") return AllreduceAlgorithm::Rabenseifner;
  if (text == "two_phase") return AllreduceAlgorithm::TwoPhase;
  if (text == "sparse_allgather") return AllreduceAlgorithm::SparseAllgather;
  if (text == "allgather") return AllreduceAlgorithm::Allgather;
  if (text == "sparse_rd" || text == "sparse_recursive_doubling") {
    return AllreduceAlgorithm::SparseRecursiveDoubling;
  }
  return std::nullopt;
}

bool algorithm_supports(AllreduceAlgorithm algorithm, compression::Method method) noexcept {
  using compression::Method;
  bool quantizer = false;
  switch (method) {
    case Method::None:
    case Method::TopK:
      break;
    case Method::Fp16:
    case Method::Bf16:
    case Method::OneBit:
    case Method::Ternary:
    case Method::Qsgd:
      quantizer = true;
      break;
  }
  const bool known = quantizer || method == Method::None || method == Method::TopK;
  switch (algorithm) {
    case AllreduceAlgorithm::Auto:
      return known;
    case AllreduceAlgorithm::Ring:
    case AllreduceAlgorithm::RecursiveDoubling:
    case AllreduceAlgorithm::Rabenseifner:
      return method == Method::None;
    case AllreduceAlgorithm::TwoPhase:
    case AllreduceAlgorithm::Allgather:
      return quantizer;
    case AllreduceAlgorithm::SparseAllgather:
    case AllreduceAlgorithm::SparseRecursiveDoubling:
      return method == Method::TopK;
  }
  return false;
}

std::string supported_algorithms(compression::Method method) {
  // Every named algorithm, in enum order: to_string's switch covers them all (-Wswitch), and
  // the first value past the last one is "unknown".
  std::string out;
  for (int i = static_cast<int>(AllreduceAlgorithm::Auto) + 1;; ++i) {
    const auto a = static_cast<AllreduceAlgorithm>(i);
    if (to_string(a) == "unknown") break;
    if (!algorithm_supports(a, method)) continue;
    if (!out.empty()) out += ", ";
    out += to_string(a);
  }
  return out;
}

AllreduceAlgorithm choose_allreduce_algorithm(std::size_t bytes, int ranks) noexcept {
  // Latency-bound messages want the fewest rounds; bandwidth-bound ones the ring, which moves
  // the minimum 2(P-1)/P of the data per rank and pipelines the reduction with the transfer.
  // Rabenseifner sits between, but only where P is a power of two: folding the extra ranks
  // costs a full extra transfer that the ring does not pay.
  if (ranks <= 1 || bytes <= kRecursiveDoublingMaxBytes) {
    return AllreduceAlgorithm::RecursiveDoubling;
  }
  if (patterns::is_pow2(ranks) && bytes <= kRabenseifnerMaxBytes) {
    return AllreduceAlgorithm::Rabenseifner;
  }
  return AllreduceAlgorithm::Ring;
}

void allreduce(Communicator& comm, std::span<std::byte> data, DType dtype,
               const AllreduceOptions& options) {
  require(data.size() % size_of(dtype) == 0, "data",
          "byte size " + std::to_string(data.size()) + " is not a whole number of " +
              std::string(to_string(dtype)) + " elements");
  require(options.op != ReduceOp::Average || dtype != DType::Int32, "op",
          "average is defined for floating types only");
  if (options.compression.method != compression::Method::None) {
    require(dtype == DType::Float32, "dtype", "compressed allreduce takes float32 only");
    const std::span<float> values(reinterpret_cast<float*>(data.data()), data.size() / 4);
    detail::compressed_allreduce(comm, values, options);
    return;
  }
  const int divisor = options.op == ReduceOp::Average ? comm.size() : 1;
  AllreduceAlgorithm algorithm = options.algorithm;
  if (algorithm == AllreduceAlgorithm::Auto) {
    algorithm = choose_allreduce_algorithm(data.size(), comm.size());
  }
  if (!algorithm_supports(algorithm, compression::Method::None)) {
    // The message only on failure: this runs on every call.
    require(false, "algorithm",
            std::string(to_string(algorithm)) + " needs a compression method; dense allreduce " +
                "runs " + supported_algorithms(compression::Method::None) + " (or auto)");
  }
  const NonFiniteAction action = options.non_finite;
  require(action >= NonFiniteAction::Default && action <= NonFiniteAction::Zero, "non_finite",
          "unknown NonFiniteAction " + std::to_string(static_cast<int>(action)));
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
    detail::AgreementTerms terms;
    terms.kind = detail::CollectiveKind::Allreduce;
    terms.count = data.size() / size_of(dtype);
    terms.dtype = dtype;
    terms.op = options.op;
    terms.algorithm = algorithm;
    terms.action = action;
    detail::CollectiveAgreement agreement(terms, non_finite);
    if (ctx.size() == 1) {
      if (!non_finite && divisor > 1) detail::divide(data, dtype, divisor);
    } else if (algorithm == AllreduceAlgorithm::RecursiveDoubling &&
               data.size() <= kAgreementInlineMaxBytes) {
      if (checked) input.assign(data.begin(), data.end());
      detail::agree_recursive_doubling(ctx, agreement, data, dtype, divisor);
      agreement.check(ctx);
      if (agreement.non_finite()) std::memcpy(data.data(), input.data(), data.size());
    } else {
      // A block-only exchange ahead of the payload: a few microseconds against the >= 2 KiB
      // messages these carry. Recursive doubling above the inline limit lands here as well.
      detail::agree_recursive_doubling(ctx, agreement, {}, dtype, 1);
      agreement.check(ctx);
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

// powersgd_allreduce: agreement, then either one dense allreduce (the first start_iter steps) or
// the two allreduces of PowerSGD's power iteration.

#include <algorithm>
#include <bit>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/compression/rng.hpp"
#include "lazy_require.hpp"
#include "powersgd_agreement.hpp"
#include "powersgd_binding.hpp"
#include "powersgd_kernels.hpp"
#include "refusal.hpp"
#include "term_agreement.hpp"

namespace frugal {

namespace kernels = detail::powersgd;

namespace {

// A dense allreduce of `data` with the caller's timeout and segments; adds the bytes it sent.
void reduce(Communicator& comm, std::span<float> data, ReduceOp op, const PowerSgdOptions& options,
            std::size_t& bytes_sent) {
  AllreduceOptions dense;
  static_cast<CollectiveOptions&>(dense) = options;
  dense.op = op;
  AllreduceStats stats;
  dense.stats = &stats;
  allreduce(comm, data, dense);
  bytes_sent += stats.wire_bytes_sent;
}

bool all_zero(std::span<const float> column) noexcept {
  return std::all_of(column.begin(), column.end(), [](float v) { return v == 0.0f; });
}

}  // namespace

void validate(const PowerSgdOptions& options) {
  require(options.rank >= 1, "rank",
          [&] { return "must be at least 1, got " + std::to_string(options.rank); });
  require(std::isfinite(options.min_compression_rate) && options.min_compression_rate >= 1.0,
          "min_compression_rate", [&] {
            return "must be finite and >= 1 (below 1 a compressed tensor would send more than "
                   "its dense self), got " +
                   std::to_string(options.min_compression_rate);
          });
  require(options.op == ReduceOp::Sum || options.op == ReduceOp::Average, "op",
          [&] { return "must be sum or average, got " + std::to_string(int(options.op)); });
  require(static_cast<std::uint8_t>(options.non_finite) <=
              static_cast<std::uint8_t>(NonFiniteAction::Zero),
          "non_finite", [&] {
            return "is not a NonFiniteAction (" + std::to_string(int(options.non_finite)) + ")";
          });
  require(!options.timeout || options.timeout->count() > 0, "timeout", "must be positive");
}

bool powersgd_compresses(std::size_t rows, std::size_t cols, const PowerSgdOptions& options) {
  return detail::powersgd_compresses(rows, cols, options.rank, options.min_compression_rate);
}

void powersgd_initial_q(std::uint64_t seed, std::size_t tensor, std::uint64_t step, std::size_t c,
                        std::span<float> column) {
  const std::size_t cols = column.size();
  compression::Rng rng(seed, tensor, step, 2 * c * cols);
  for (float& v : column) {
    // Box-Muller; 1 - u1 is in (0, 1], so the log is finite.
    const double u1 = rng.next_double();
    const double u2 = rng.next_double();
    v = static_cast<float>(std::sqrt(-2.0 * std::log(1.0 - u1)) *
                           std::cos(2.0 * std::numbers::pi * u2));
  }
}

void powersgd_allreduce(Communicator& comm, std::span<const PowerSgdTensor> tensors,
                        PowerSgdState& state, const PowerSgdOptions& options) {
  PowerSgdState::Layout layout;
  // Options or tensors refused on one rank are refused on every rank (refusal.hpp): the others
  // are already in the vote's allreduce.
  detail::AgreementTerms vote_terms;
  vote_terms.kind = detail::CollectiveKind::Allreduce;
  detail::refusing(comm, options, vote_terms, [&] {
    validate(options);
    for (std::size_t t = 0; t < tensors.size(); ++t) {
      const PowerSgdTensor& tensor = tensors[t];
      require(tensor.cols == 0 || tensor.rows <= tensor.data.size() / tensor.cols, "tensors", [&] {
        return "tensor " + std::to_string(t) + ": rows * cols overflows or exceeds its data";
      });
      require(tensor.data.size() == tensor.rows * tensor.cols, "tensors", [&] {
        return "tensor " + std::to_string(t) + " holds " + std::to_string(tensor.data.size()) +
               " floats, its shape " + std::to_string(tensor.rows) + " x " +
               std::to_string(tensor.cols) + " says " + std::to_string(tensor.rows * tensor.cols);
      });
      layout.shapes.push_back(tensor.rows);
      layout.shapes.push_back(tensor.cols);
    }
  });
  layout.ranks = comm.size();
  layout.rank = comm.rank();
  layout.approximation_rank = options.rank;
  layout.op = static_cast<std::uint8_t>(options.op);
  layout.feedback = options.error_feedback ? 1 : 0;
  layout.min_compression_rate = options.min_compression_rate;

  PowerSgdStats stats;
  // Under Zero each rank cleans its own input after the agreement: nothing to decide together.
  bool non_finite = false;
  if (options.non_finite != NonFiniteAction::Zero) {
    for (const PowerSgdTensor& tensor : tensors) {
      non_finite |= detail::has_non_finite(std::as_bytes(tensor.data), DType::Float32);
    }
  }

  detail::PowerSgdTerms terms;
  terms.tensors = tensors.size();
  terms.shapes_digest = detail::digest_of(layout.shapes);
  terms.rank = static_cast<std::uint64_t>(options.rank);
  terms.op = layout.op;
  terms.error_feedback = layout.feedback;
  terms.min_compression_rate_bits = std::bit_cast<std::uint64_t>(options.min_compression_rate);
  terms.start_iter = options.start_iter;
  terms.seed = options.seed;
  terms.non_finite_action = static_cast<std::uint64_t>(options.non_finite);
  terms.step = state.steps();
  const std::string change = detail::PowerSgdBinding::changes(state, layout);
  const detail::PowerSgdVerdict verdict =
      detail::powersgd_agree(comm, terms, non_finite, change, options, stats.wire_bytes_sent);

  const auto publish = [&] {
    if (options.stats != nullptr) *options.stats = stats;
  };
  if (verdict.non_finite) {
    if (options.non_finite == NonFiniteAction::Skip) {
      stats.non_finite_skipped = true;
      publish();
      return;
    }
    throw Error(ErrorCode::InvalidArgument,
                "non_finite: some rank's gradient holds NaN or Inf (powersgd_allreduce; tensors "
                "and state untouched; NonFiniteAction::Skip or Zero to go on)");
  }
  if (options.non_finite == NonFiniteAction::Zero) {
    for (const PowerSgdTensor& tensor : tensors) {
      stats.non_finite_zeroed +=
          detail::zero_non_finite(std::as_writable_bytes(tensor.data), DType::Float32);
    }
  }
  if (!state.bound()) detail::PowerSgdBinding::bind(state, layout, options.seed);

  // The first start_iter steps: every tensor exact, in one allreduce.
  if (state.steps() < options.start_iter) {
    std::size_t total = 0;
    for (const PowerSgdTensor& tensor : tensors) total += tensor.data.size();
    if (total > 0) {
      std::vector<float> all(total);
      auto at = all.begin();
      for (const PowerSgdTensor& tensor : tensors)
        at = std::copy(tensor.data.begin(), tensor.data.end(), at);
      reduce(comm, all, options.op, options, stats.wire_bytes_sent);
      at = all.begin();
      for (const PowerSgdTensor& tensor : tensors) {
        std::copy_n(at, tensor.data.size(), tensor.data.begin());
        at += static_cast<std::ptrdiff_t>(tensor.data.size());
      }
    }
    detail::PowerSgdBinding::advance(state);
    stats.dense_step = true;
    publish();
    return;
  }

  // Offsets of each compressed tensor's P in the first buffer (the dense tensors follow) and of
  // its Q in the second.
  const auto r = static_cast<std::size_t>(options.rank);
  std::vector<bool> compressed(tensors.size());
  std::vector<std::size_t> p_at(tensors.size()), q_at(tensors.size());
  std::size_t p_total = 0, q_total = 0, dense_total = 0;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    compressed[t] = powersgd_compresses(tensors[t].rows, tensors[t].cols, options);
    if (compressed[t]) {
      p_at[t] = p_total;
      q_at[t] = q_total;
      p_total += r * tensors[t].rows;
      q_total += r * tensors[t].cols;
      ++stats.compressed_tensors;
    } else {
      dense_total += tensors[t].data.size();
    }
  }

  std::vector<float> first(p_total + dense_total);
  std::size_t dense_at = p_total;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const PowerSgdTensor& tensor = tensors[t];
    if (!compressed[t]) {
      std::copy(tensor.data.begin(), tensor.data.end(), first.begin() + std::ptrdiff_t(dense_at));
      dense_at += tensor.data.size();
      continue;
    }
    if (options.error_feedback) {
      kernels::compensate(tensor.data, detail::PowerSgdBinding::residual(state, t));
    }
    kernels::multiply_mq(tensor.data, tensor.rows, tensor.cols,
                         detail::PowerSgdBinding::q(state, t), r,
                         std::span<float>(first).subspan(p_at[t], r * tensor.rows));
  }
  if (!first.empty()) reduce(comm, first, options.op, options, stats.wire_bytes_sent);

  std::vector<float> second(q_total);
  dense_at = p_total;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const PowerSgdTensor& tensor = tensors[t];
    if (!compressed[t]) {
      std::copy_n(first.begin() + std::ptrdiff_t(dense_at), tensor.data.size(),
                  tensor.data.begin());
      dense_at += tensor.data.size();
      continue;
    }
    const std::span<float> p = std::span<float>(first).subspan(p_at[t], r * tensor.rows);
    kernels::orthonormalise(p, tensor.rows, r);
    kernels::multiply_mtp(tensor.data, tensor.rows, tensor.cols, p, r,
                          std::span<float>(second).subspan(q_at[t], r * tensor.cols));
  }
  if (!second.empty()) reduce(comm, second, options.op, options, stats.wire_bytes_sent);

  const float divisor = options.op == ReduceOp::Sum ? static_cast<float>(comm.size()) : 1.0f;
  const std::uint64_t next_step = state.steps() + 1;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    if (!compressed[t]) continue;
    const PowerSgdTensor& tensor = tensors[t];
    const std::span<const float> p =
        std::span<const float>(first).subspan(p_at[t], r * tensor.rows);
    const std::span<const float> q =
        std::span<const float>(second).subspan(q_at[t], r * tensor.cols);
    std::vector<float>& residual = detail::PowerSgdBinding::residual(state, t);
    kernels::reconstruct(tensor.data, tensor.rows, tensor.cols, p, q, r,
                         options.error_feedback ? std::span<float>(residual) : std::span<float>(),
                         divisor);
    // The reduced Q is next step's warm start; a dead (all-zero) column is drawn again.
    std::vector<float>& warm = detail::PowerSgdBinding::q(state, t);
    std::copy(q.begin(), q.end(), warm.begin());
    for (std::size_t c = 0; c < r; ++c) {
      const std::span<float> column = std::span<float>(warm).subspan(c * tensor.cols, tensor.cols);
      if (all_zero(column)) powersgd_initial_q(options.seed, t, next_step, c, column);
    }
  }
  detail::PowerSgdBinding::advance(state);
  publish();
}

}  // namespace frugal

#include <string>

#include "../patterns/chunking.hpp"
#include "frugal/collectives/elastic.hpp"
#include "lazy_require.hpp"
#include "state_binding.hpp"

namespace frugal {

namespace {

using Layout = AllreduceState::Layout;

// The layout every state shares, or InvalidArgument naming the first state that differs.
const Layout* common_layout(std::span<const AllreduceState> states) {
  const auto old_ranks = static_cast<int>(states.size());
  const Layout* first = nullptr;
  for (std::size_t i = 0; i < states.size(); ++i) {
    const auto& layout = detail::StateBinding::layout(states[i]);
    const std::string which = "states[" + std::to_string(i) + "]";
    require(states[i].steps() == states[0].steps() && states[i].decay() == states[0].decay(),
            "states", [&] { return which + " has another step count or decay than states[0]"; });
    require(layout.has_value() == detail::StateBinding::layout(states[0]).has_value(), "states",
            [&] { return which + " is bound to a buffer and states[0] is not, or the reverse"; });
    if (!layout) continue;
    require(layout->ranks == old_ranks && layout->rank == static_cast<int>(i), "states", [&] {
      return which + " belongs to rank " + std::to_string(layout->rank) + " of " +
             std::to_string(layout->ranks) + "; expected rank " + std::to_string(i) + " of " +
             std::to_string(old_ranks) + " (one state per old rank, in rank order)";
    });
    if (first == nullptr) {
      first = &*layout;
      continue;
    }
    Layout same = *layout;
    same.rank = first->rank;
    require(same == *first, "states",
            [&] { return which + " was used for another buffer, method, op or k than states[0]"; });
  }
  return first;
}

}  // namespace

std::vector<AllreduceState> redistribute_states(std::span<const AllreduceState> states,
                                                int new_ranks, const AllreduceOptions& options) {
  require(!states.empty(), "states", "no states to redistribute");
  require(new_ranks >= 1, "new_ranks",
          [&] { return "must be >= 1, got " + std::to_string(new_ranks); });
  const Layout* old = common_layout(states);
  std::vector<AllreduceState> out;
  out.reserve(static_cast<std::size_t>(new_ranks));
  for (int j = 0; j < new_ranks; ++j) {
    out.emplace_back(states[0].decay());
    detail::StateBinding::set_steps(out.back(), states[0].steps());
  }
  if (old == nullptr || old->feedback == 0) return out;

  require(static_cast<std::uint8_t>(options.op) == old->op, "options.op", [&] {
    return "the states were kept under op " +
           std::string(to_string(static_cast<ReduceOp>(old->op))) + ", the options say " +
           std::string(to_string(options.op));
  });
  require(static_cast<std::uint8_t>(options.compression.method) == old->method,
          "options.compression.method", "differs from the method the states were kept for");
  const auto old_ranks = static_cast<int>(states.size());
  const std::size_t count = old->count;
  AllreduceAlgorithm algorithm = options.algorithm;
  if (algorithm == AllreduceAlgorithm::Auto) {
    algorithm = choose_allreduce_algorithm(options, count, new_ranks);
  }
  const bool server_side = algorithm == AllreduceAlgorithm::TwoPhase;
  const bool average = options.op == ReduceOp::Average;

  // Worker residuals: old rank i's goes to new rank i * P' / P, summed in rank order.
  std::vector<std::vector<float>> worker(static_cast<std::size_t>(new_ranks),
                                         std::vector<float>(count, 0.0f));
  for (int i = 0; i < old_ranks; ++i) {
    const std::span<const float> r = states[static_cast<std::size_t>(i)].worker_residual();
    std::vector<float>& to = worker[static_cast<std::size_t>(i * new_ranks / old_ranks)];
    for (std::size_t e = 0; e < r.size(); ++e) to[e] += r[e];
  }
  if (average && new_ranks != old_ranks) {
    const float factor = static_cast<float>(new_ranks) / static_cast<float>(old_ranks);
    for (auto& w : worker) {
      for (float& x : w) x *= factor;
    }
  }

  // Server residuals, one per element, in output units: S.
  std::vector<float> server(count, 0.0f);
  for (int i = 0; i < old_ranks; ++i) {
    const std::span<const float> s = states[static_cast<std::size_t>(i)].server_residual();
    if (s.empty()) continue;
    const patterns::Range chunk = patterns::chunk_range(count, old_ranks, i);
    for (std::size_t e = 0; e < s.size() && e < chunk.count; ++e) server[chunk.offset + e] = s[e];
  }

  const std::vector<float> zeros(count, 0.0f);
  for (int j = 0; j < new_ranks; ++j) {
    const patterns::Range chunk = patterns::chunk_range(count, new_ranks, j);
    std::vector<float>& w = worker[static_cast<std::size_t>(j)];
    if (!server_side) {
      // Added through the workers: under Average the sum is divided by P' again.
      const float scale = average ? static_cast<float>(new_ranks) : 1.0f;
      for (std::size_t e = chunk.offset; e < chunk.end(); ++e) w[e] += scale * server[e];
    }
    Layout layout = *old;
    layout.ranks = new_ranks;
    layout.rank = j;
    AllreduceState& state = out[static_cast<std::size_t>(j)];
    detail::StateBinding::bind(state, layout, count, server_side ? chunk.count : 0);
    // absorb(r, 0) sets the residual to r.
    detail::StateBinding::worker(state)->absorb(w, std::span(zeros).first(count));
    if (compression::ErrorFeedback* s = detail::StateBinding::server(state)) {
      s->absorb(std::span<const float>(server).subspan(chunk.offset, chunk.count),
                std::span(zeros).first(chunk.count));
    }
  }
  return out;
}

}  // namespace frugal

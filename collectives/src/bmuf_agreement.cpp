#include <array>
#include <bit>
#include <cmath>
#include <set>
#include <string_view>

#include "bmuf_terms.hpp"
#include "fnv1a.hpp"
#include "frugal/error.hpp"
#include "term_agreement.hpp"

namespace frugal::detail {

namespace {

// The parameters a rank can find out of range, in the order of the vote's flags.
constexpr std::array<std::string_view, 4> kProblemNames = {"block_steps", "block_momentum",
                                                           "block_lr", "tensors"};

}  // namespace

std::uint64_t bmuf_layout_key(std::span<const BmufTensor> tensors) noexcept {
  Fnv1a h;
  for (const BmufTensor& t : tensors) h.add(t.name.data(), t.name.size()).add64(t.data.size());
  return h.value();
}

BmufProblem bmuf_problem(const BmufOptions& o, std::span<const BmufTensor> tensors) {
  if (o.block_steps < 1) return {"block_steps", "must be >= 1 (local steps per block), got 0"};
  if (!(o.block_momentum >= 0 && o.block_momentum < 1)) {
    return {"block_momentum", "must be in [0, 1), got " + std::to_string(o.block_momentum)};
  }
  if (!(std::isfinite(o.block_lr) && o.block_lr > 0)) {
    return {"block_lr", "must be finite and > 0, got " + std::to_string(o.block_lr)};
  }
  if (tensors.empty()) return {"tensors", "no tensor registered"};
  std::set<std::string_view> names;
  for (const BmufTensor& t : tensors) {
    if (t.name.empty()) return {"tensors", "a tensor has an empty name"};
    if (!names.insert(t.name).second) return {"tensors", "'" + t.name + "' is registered twice"};
    if (t.data.empty()) return {"tensors", "'" + t.name + "' has no elements"};
  }
  return {};
}

void bmuf_agree(Communicator& comm, const BmufOptions& o, const BmufProblem& problem,
                std::uint64_t tensor_count, std::uint64_t element_count, std::uint64_t layout_key) {
  static constexpr std::array<const char*, 7> kTermNames = {"block_steps",
                                                            "block_momentum",
                                                            "block_lr",
                                                            "nesterov",
                                                            "the number of tensors",
                                                            "the number of elements",
                                                            "the tensors' names or sizes"};
  const std::array<std::uint64_t, 7> terms = {o.block_steps,
                                              std::bit_cast<std::uint64_t>(o.block_momentum),
                                              std::bit_cast<std::uint64_t>(o.block_lr),
                                              o.nesterov ? 1U : 0U,
                                              tensor_count,
                                              element_count,
                                              layout_key};
  agree_on_options(comm, terms, kTermNames, kProblemNames, problem, o.allreduce, "Bmuf",
                   "their options or tensors");
}

}  // namespace frugal::detail

// What the ranks of a Bmuf agree on at construction, and the checks shared by the constructor
// and restore_state (bmuf_agreement.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "frugal/collectives/bmuf.hpp"
#include "frugal/communicator.hpp"
#include "term_agreement.hpp"

namespace frugal::detail {

// FNV-1a over the tensors' names and sizes: a checkpoint's state finds the same layout again.
std::uint64_t bmuf_layout_key(std::span<const BmufTensor> tensors) noexcept;

// The first parameter out of range ("block_steps", "block_momentum", "block_lr", "tensors")
// and why, or an empty name when everything is valid.
using BmufProblem = OptionProblem;
BmufProblem bmuf_problem(const BmufOptions& options, std::span<const BmufTensor> tensors);

// agree_on_options (term_agreement.hpp) on every rank's options and layout.
void bmuf_agree(Communicator& comm, const BmufOptions& options, const BmufProblem& problem,
                std::uint64_t tensor_count, std::uint64_t element_count, std::uint64_t layout_key);

}  // namespace frugal::detail

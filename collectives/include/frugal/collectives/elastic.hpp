#pragma once

#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"

namespace frugal {

// Elastic resume: the error-feedback states that P ranks kept for one buffer, re-cut for a job
// of P' ranks, so that a checkpoint written by P ranks resumes on P' without losing what
// compression has dropped so far. `states[i]` is old rank i's state; `new_ranks` is P';
// `options` are what the new job calls allreduce with (op and method must be the states', and
// its algorithm, or auto's choice at P', decides whether the new states have a server side).
// Returns P' states, new rank j's at index j, bound to the buffer on P' ranks.
//
// What a state carries forward is the update its residuals stand for: with d = P under
// ReduceOp::Average and 1 under Sum, the next allreduce adds sum_i(worker_i) / d + S, where S is
// the two-phase owners' server residuals taken together (one per element, in output units).
// The rule keeps that sum, up to float rounding:
//  - Worker residuals: new rank j takes the residuals of the old ranks i with i * P' / P == j
//    (rounded down), summed in rank order and, under Average, multiplied by P' / P. Shrinking,
//    a new rank inherits the ranks whose data it takes over; growing, each old rank's residual
//    goes to one new rank and the others start from zero.
//  - Server residuals: element e of S goes to the rank owning e in the new job's two-phase
//    split; without a server side at P' (auto chooses allgather at P' = 2 for the quantizers,
//    sparse algorithms for top-k), it is added to that rank's worker residual instead, times P'
//    under Average.
//  - The step counter and decay are kept. States without error feedback, or never used, come
//    back unbound (nothing to carry).
// Throws InvalidArgument naming the problem: no states, P' < 1, states of different buffers,
// methods, ops, steps or decays, a state whose rank or rank count does not match its position,
// or options whose op or method differ from the states'.
std::vector<AllreduceState> redistribute_states(std::span<const AllreduceState> states,
                                                int new_ranks, const AllreduceOptions& options);

}  // namespace frugal

#pragma once

#include <span>

#include "allreduce_plan.hpp"
#include "frugal/collectives/allreduce.hpp"

namespace frugal::detail {

// allreduce() with a compression method, once plan_allreduce has checked the options: the
// compressor, state binding, algorithm dispatch.
void compressed_allreduce(Communicator& comm, std::span<float> data,
                          const AllreduceOptions& options, const AllreducePlan& plan);

}  // namespace frugal::detail

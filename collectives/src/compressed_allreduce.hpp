#pragma once

#include <span>

#include "frugal/collectives/allreduce.hpp"

namespace frugal::detail {

// allreduce() with a compression method: validation, state binding, algorithm dispatch.
void compressed_allreduce(Communicator& comm, std::span<float> data,
                          const AllreduceOptions& options);

}  // namespace frugal::detail

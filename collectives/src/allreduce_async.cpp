#include <vector>

#include "frugal/collectives/async.hpp"

namespace frugal {

AllreduceHandle allreduce_async(Communicator& comm, std::span<float> data,
                                const AllreduceOptions& options) {
  // The segments are copied with the options: a caller may let its array go once the call has
  // returned (the C API and Python build theirs per call).
  std::vector<std::size_t> segments(options.segments.begin(), options.segments.end());
  return AllreduceHandle(comm.engine().submit(
      [&comm, data, options = AllreduceOptions(options), segments = std::move(segments)]() mutable {
        options.segments = segments;
        allreduce(comm, data, options);
      }));
}

}  // namespace frugal

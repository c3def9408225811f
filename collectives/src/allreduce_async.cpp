#include "frugal/collectives/async.hpp"

namespace frugal {

AllreduceHandle allreduce_async(Communicator& comm, std::span<float> data,
                                const AllreduceOptions& options) {
  return AllreduceHandle(
      comm.engine().submit([&comm, data, options] { allreduce(comm, data, options); }));
}

}  // namespace frugal

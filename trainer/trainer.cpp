#include "trainer.hpp"

#include <numeric>
#include <string>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/group_transport.hpp"
#include "training_run.hpp"

namespace frugal::train {

RunResult run_training(Communicator& comm, const CountingTransport* counter, const Dataset& train,
                       const Dataset& val, const TrainOptions& options, std::ostream& out) {
  // Checked on every rank before the roles part, so that every rank refuses alike.
  checked_options(options, train, val);
  const int workers = options.async_ps ? comm.size() - options.servers : comm.size();
  require(workers >= 1, "--servers",
          "must be below the number of ranks (" + std::to_string(comm.size()) +
              "): at least one rank must train");
  require(options.straggler_rank < workers, "--straggler",
          "rank " + std::to_string(options.straggler_rank) + " is not a " +
              (options.async_ps ? "worker" : "rank") + " (" + std::to_string(workers) + ")");
  if (!options.async_ps) return TrainingRun(comm, nullptr, counter, train, val, options, out).run();
  if (is_server_rank(comm.rank(), comm.size(), options.servers)) {
    return serve_parameters(comm, train, options, out);
  }
  // The workers' own communicator: validation, BN statistics and logs do not involve servers.
  std::vector<int> members(static_cast<std::size_t>(workers));
  std::iota(members.begin(), members.end(), 0);
  const std::unique_ptr<Communicator> worker_comm = make_group_communicator(comm, members);
  return TrainingRun(*worker_comm, &comm, counter, train, val, options, out).run();
}

}  // namespace frugal::train

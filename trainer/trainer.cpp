#include "trainer.hpp"

#include "training_run.hpp"

namespace frugal::train {

RunResult run_training(Communicator& comm, const CountingTransport* counter, const Dataset& train,
                       const Dataset& val, const TrainOptions& options, std::ostream& out) {
  return TrainingRun(comm, counter, train, val, options, out).run();
}

}  // namespace frugal::train

#pragma once

#include <memory>
#include <span>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/progress_engine.hpp"

namespace frugal {

// Handle to an allreduce running on its communicator's progress engine.
//
// Thread-safety: a handle may be tested and waited from any thread. Destroying it does not
// cancel the allreduce, which still runs (so its buffer must outlive it either way).
class AllreduceHandle {
 public:
  using State = AsyncTask::State;  // Queued, Running, Done

  AllreduceHandle() = default;
  explicit AllreduceHandle(std::shared_ptr<AsyncTask> task) : task_(std::move(task)) {}

  bool valid() const noexcept { return task_ != nullptr; }
  State state() const noexcept { return task_ ? task_->state() : State::Done; }
  // True once the allreduce has finished, successfully or not. Never throws.
  bool test() const noexcept { return state() == State::Done; }
  // Blocks until the allreduce has finished and rethrows its error, if any, on this thread.
  void wait() {
    if (task_) task_->wait();
  }

 private:
  std::shared_ptr<AsyncTask> task_;
};

// Queues allreduce(comm, data, options) on the communicator's progress engine (one background
// thread per communicator) and returns at once. Queued allreduces run one at a time in
// submission order, which is therefore the collective order: every rank must submit the same
// allreduces in the same order.
//
// Until the handle reports done: `data`, and options.state / options.stats if set, belong to the
// allreduce and must not be touched or freed. Submit from one thread at a time per
// communicator; blocking collectives on the same communicator throw InvalidArgument while
// anything is queued or running. Errors (including InvalidArgument) are rethrown by wait().
AllreduceHandle allreduce_async(Communicator& comm, std::span<float> data,
                                const AllreduceOptions& options = {});

}  // namespace frugal

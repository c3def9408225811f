#include "frugal/progress_engine.hpp"

namespace frugal {

void AsyncTask::wait() {
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return state_.load(std::memory_order_acquire) == State::Done; });
  if (error_) std::rethrow_exception(error_);
}

ProgressEngine::ProgressEngine() : thread_([this] { run(); }) {}

ProgressEngine::~ProgressEngine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<AsyncTask> ProgressEngine::submit(std::function<void()> work) {
  auto task = std::make_shared<AsyncTask>();
  task->work_ = std::move(work);
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(task);
  }
  wake_.notify_one();
  return task;
}

bool ProgressEngine::idle() const {
  std::lock_guard lock(mutex_);
  return queue_.empty() && !running_task_;
}

void ProgressEngine::run() {
  for (;;) {
    std::shared_ptr<AsyncTask> task;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued has run
      task = std::move(queue_.front());
      queue_.pop_front();
      running_task_ = true;
    }
    task->state_.store(AsyncTask::State::Running, std::memory_order_release);
    try {
      task->work_();
    } catch (...) {
      task->error_ = std::current_exception();
    }
    task->work_ = nullptr;  // release what the work captured before anyone is told it is done
    {
      std::lock_guard lock(mutex_);
      running_task_ = false;
    }
    {
      std::lock_guard lock(task->mutex_);
      task->state_.store(AsyncTask::State::Done, std::memory_order_release);
    }
    task->done_.notify_all();
  }
}

}  // namespace frugal

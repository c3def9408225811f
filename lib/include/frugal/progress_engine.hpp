#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace frugal {

// One queued piece of work and what became of it. Shared by the engine and the caller's handle.
class AsyncTask {
 public:
  enum class State { Queued, Running, Done };

  State state() const noexcept { return state_.load(std::memory_order_acquire); }
  // Blocks until the task has run; rethrows what it threw, on the calling thread.
  void wait();

 private:
  friend class ProgressEngine;
  std::function<void()> work_;
  std::atomic<State> state_{State::Queued};
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable done_;
};

// A background thread that runs submitted work one item at a time, in submission order. Each
// communicator owns at most one, so its asynchronous collectives keep the same order on every
// rank (the order every rank submitted them in). Thread-safe. The destructor runs what is still
// queued (every collective has a deadline, so this ends) and joins the thread.
class ProgressEngine {
 public:
  ProgressEngine();
  ~ProgressEngine();
  ProgressEngine(const ProgressEngine&) = delete;
  ProgressEngine& operator=(const ProgressEngine&) = delete;

  std::shared_ptr<AsyncTask> submit(std::function<void()> work);

  // True when nothing is queued or running.
  bool idle() const;
  bool on_engine_thread() const noexcept { return std::this_thread::get_id() == thread_.get_id(); }

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<AsyncTask>> queue_;
  bool running_task_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace frugal

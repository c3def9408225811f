#include "frugal/communicator.hpp"

#include <cmath>
#include <cstdlib>
#include <string>

namespace frugal {

namespace {

constexpr std::chrono::milliseconds kDefaultTimeout{60'000};

std::chrono::milliseconds default_timeout() {
  if (const char* env = std::getenv("FRUGAL_TIMEOUT"); env != nullptr && *env != '\0') {
    return parse_timeout_seconds(env, "FRUGAL_TIMEOUT");
  }
  return kDefaultTimeout;
}

}  // namespace

std::chrono::milliseconds parse_timeout_seconds(const std::string& text, std::string_view name) {
  char* end = nullptr;
  const double seconds = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || !std::isfinite(seconds) || seconds <= 0 ||
      seconds > 1e7) {
    throw Error(ErrorCode::InvalidArgument,
                std::string(name) + ": expected a positive number of seconds, got '" + text + "'");
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(seconds * 1000.0)));
}

Communicator::Communicator(std::unique_ptr<Transport> transport, CommunicatorOptions options)
    : transport_(std::move(transport)) {
  require(transport_ != nullptr, "transport", "must not be null");
  set_timeout(options.timeout ? *options.timeout : default_timeout());
}

void Communicator::set_timeout(std::chrono::milliseconds timeout) {
  require(timeout.count() > 0, "timeout", "must be positive");
  timeout_ = timeout;
}

ProgressEngine& Communicator::engine() {
  std::lock_guard lock(mutex_);
  if (!engine_) engine_ = std::make_unique<ProgressEngine>();
  return *engine_;
}

Tag Communicator::begin_collective() {
  std::lock_guard lock(mutex_);
  if (engine_ && !engine_->on_engine_thread() && !engine_->idle()) {
    throw Error(ErrorCode::InvalidArgument,
                "a blocking collective was called while asynchronous collectives are pending "
                "on this communicator; wait for their handles first");
  }
  if (failure_) {
    throw Error(failure_->code(),
                std::string("communicator failed earlier and cannot be used again (") +
                    failure_->what() + ")");
  }
  const std::uint64_t seq = sequence_++;
  return static_cast<Tag>(seq % (static_cast<std::uint64_t>(transport_->max_tag()) + 1));
}

void Communicator::fail(const Error& error, bool every_rank_knows) {
  std::lock_guard lock(mutex_);
  if (failure_) return;
  failure_ = error;
  if (!every_rank_knows) transport_->notify_failure(error);
}

bool Communicator::failed() const {
  std::lock_guard lock(mutex_);
  return failure_.has_value();
}

}  // namespace frugal

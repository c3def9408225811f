#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "frugal/error.hpp"
#include "frugal/progress_engine.hpp"
#include "frugal/transport.hpp"

namespace frugal {

struct CommunicatorOptions {
  // Longest a single wait for a peer may take before Timeout. When unset: FRUGAL_TIMEOUT
  // (seconds, may be fractional) from the environment, else 60 s.
  std::optional<std::chrono::milliseconds> timeout;
};

// A group of ranks plus what every collective needs: the transport (owned), the default
// timeout and the sequence number that gives each collective its own tag.
//
// Every rank must call collectives on a communicator in the same order. Not thread-safe: one
// collective at a time per communicator. Asynchronous collectives run on the communicator's
// progress engine (one background thread, created on first use) in submission order; while any
// is queued or running, a blocking collective on the same communicator throws InvalidArgument
// (wait for the handles first). After a Timeout, PeerFailure or Transport error the
// communicator is failed: later collectives throw the same error at once, because peers may be
// left mid-collective and further messages would be matched wrongly.
class Communicator {
 public:
  explicit Communicator(std::unique_ptr<Transport> transport, CommunicatorOptions options = {});
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const noexcept { return transport_->rank(); }
  int size() const noexcept { return transport_->size(); }
  Transport& transport() noexcept { return *transport_; }

  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout);

  // Number of collectives started so far.
  std::uint64_t sequence() const noexcept { return sequence_; }

  // Starts a collective: throws if the communicator has failed, and returns the tag all of this
  // collective's messages use (sequence number folded into the transport's tag range).
  Tag begin_collective();

  // The background thread that runs this communicator's asynchronous collectives.
  ProgressEngine& engine();

  // Marks the communicator failed with `error` (called by collectives on fatal errors) and,
  // unless every rank reached the same verdict in an agreement (`every_rank_knows`), tells the
  // peers through the transport, so that a rank waiting on this one fails at once. An agreed
  // failure must not be announced: a peer still finishing the agreement would take the notice
  // for a peer failure and throw PeerFailure instead of the Mismatch it is about to see.
  void fail(const Error& error, bool every_rank_knows = false);
  bool failed() const;

 private:
  std::unique_ptr<Transport> transport_;
  std::chrono::milliseconds timeout_;
  std::uint64_t sequence_ = 0;
  // Guards failure_ and engine_: an asynchronous collective fails the communicator on the
  // engine thread while the caller may be asking.
  mutable std::mutex mutex_;
  std::optional<Error> failure_;
  // Declared last: destroyed first, so queued collectives finish while the transport still exists.
  std::unique_ptr<ProgressEngine> engine_;
};

// Parses FRUGAL_TIMEOUT-style text ("30", "0.5") into milliseconds; throws InvalidArgument.
std::chrono::milliseconds parse_timeout_seconds(const std::string& text, std::string_view name);

}  // namespace frugal

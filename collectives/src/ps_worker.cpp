// The worker's side of the parameter server: per shard, the push (dense or compressed with the
// worker's error feedback) and the pull answer.
#include <algorithm>
#include <cmath>
#include <exception>
#include <optional>
#include <string>
#include <thread>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/error.hpp"
#include "ps_protocol.hpp"

namespace frugal {

using detail::PsHeader;
using detail::PsKind;

struct PsWorker::Shard {
  int rank = 0;  // the server's
  std::size_t begin = 0, end = 0;
  std::optional<compression::ErrorFeedback> feedback;
  std::vector<std::byte> out;  // header + body of the push
  std::vector<std::byte> in;   // header + the shard's floats (or an abort's text)
  Request send, recv;
  std::int64_t clock = 0;
  std::uint64_t applied = 0;  // the server's applied count in its last answer
  std::size_t size() const noexcept { return end - begin; }
};

namespace {

// Transport::wait_all spins and yields (UCX's sleeps after a millisecond, MPI's and the base's
// do not), which suits a collective whose peers answer within microseconds. A worker's answer may
// be held for a whole step of a slower worker, and on oversubscribed cores that spinning takes the
// CPU from the very workers it waits for: so poll, then sleep in growing steps (at most 200 µs,
// small against a step). Transport::wait_all also reads peers' failure notices (MPI's), which
// test() does not: it is called with a deadline of now every 20 ms, and once more at the deadline
// to throw its Timeout.
void wait_sleeping(Transport& t, std::span<Request* const> requests, Deadline deadline) {
  constexpr auto kNoticeEvery = std::chrono::milliseconds(20);
  constexpr int kYields = 100;
  auto next_notice_check = Clock::now() + kNoticeEvery;
  int idle = 0;
  for (;;) {
    bool all_done = true, progressed = false;
    for (Request* r : requests) {
      if (r->done()) continue;
      if (t.test(*r)) {
        progressed = true;
      } else {
        all_done = false;
      }
    }
    if (all_done) return;
    if (progressed) {
      idle = 0;
      continue;
    }
    const auto now = Clock::now();
    if (now >= deadline) {
      t.wait_all(requests, now);  // throws Timeout naming the first unfinished request
      return;
    }
    if (now >= next_notice_check) {
      try {
        t.wait_all(requests, now);
        return;
      } catch (const Error& e) {
        if (e.code() != ErrorCode::Timeout) throw;
      }
      next_notice_check = Clock::now() + kNoticeEvery;
    }
    if (++idle > kYields) {
      std::this_thread::sleep_for(std::chrono::microseconds(std::min(idle - kYields, 200)));
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace

int PsWorker::workers() const noexcept {
  return comm_.size() - options_.servers;
}

PsWorker::PsWorker(Communicator& comm, std::span<float> parameters, ParameterServerOptions options)
    : comm_(comm), parameters_(parameters), options_(std::move(options)) {
  tag_ = detail::ps_agree(comm_, options_, parameters_.size());
  require(comm_.rank() < workers(), "servers", "this rank is a server's: use PsServer");
  if (options_.compression.method != compression::Method::None) {
    compressor_ = compression::make_compressor(options_.compression);
  }
  shards_.resize(static_cast<std::size_t>(options_.servers));
  for (int j = 0; j < options_.servers; ++j) {
    Shard& s = shards_[static_cast<std::size_t>(j)];
    s.rank = detail::server_rank(comm_, options_.servers, j);
    std::tie(s.begin, s.end) = shard_range(parameters_.size(), options_.servers, j);
    const std::size_t dense = s.size() * sizeof(float);
    const std::size_t body =
        compressor_ ? std::max(dense, compressor_->max_encoded_bytes(s.size())) : dense;
    s.out.resize(detail::kPsHeaderBytes + body);
    s.in.resize(detail::kPsHeaderBytes + std::max(dense, detail::kPsAbortTextMax));
    if (compressor_ && options_.error_feedback) s.feedback.emplace(s.size());
  }
  // Worker 0's values initialise the servers; every worker then starts from the servers'.
  send_to_servers(comm_.rank() == 0 ? static_cast<std::uint8_t>(PsKind::Init) : 0, {}, 0);
  receive_from_servers();
}

PsWorker::~PsWorker() {
  // Unwinding from an error, this worker is failing: the servers must see that (the transport
  // reports it, or its silence does), not a regular finish.
  if (finished_ || comm_.failed() || std::uncaught_exceptions() > 0) return;
  try {
    finish();
  } catch (const Error&) {
    // A destructor cannot report; finish() already failed the communicator.
  }
}

void PsWorker::fail(const Error& error) {
  comm_.fail(error);
  throw error;
}

// Posts one message of `kind` to every server (kind 0: none), the receive of every server's
// answer, and waits for all of them.
void PsWorker::send_to_servers(std::uint8_t kind, std::span<const float> gradient, double lr) {
  if (comm_.failed()) fail(Error(ErrorCode::PeerFailure, "parameter server: communicator failed"));
  Transport& t = comm_.transport();
  const auto k = static_cast<PsKind>(kind);
  try {
    for (Shard& s : shards_) {
      if (kind == 0) continue;
      PsHeader h;
      h.kind = k;
      h.step = stats_.pushes;
      h.clock = s.clock;
      h.lr = lr;
      std::span<std::byte> body = std::span(s.out).subspan(detail::kPsHeaderBytes);
      std::size_t bytes = 0;
      if (k == PsKind::Init) {
        h.count = s.size();
        bytes = s.size() * sizeof(float);
        std::memcpy(body.data(), parameters_.data() + s.begin, bytes);
      } else if (k == PsKind::Push) {
        const std::span<const float> g = gradient.subspan(s.begin, s.size());
        if (!compressor_) {
          bytes = g.size_bytes();
          std::memcpy(body.data(), g.data(), bytes);
        } else {
          // Positions of the random stream by (seed, rank, step, parameter index): reproducible,
          // and no two pushes or shards share randomness.
          compression::Rng rng(options_.seed, static_cast<std::uint64_t>(comm_.rank()),
                               stats_.pushes, s.begin);
          bytes = s.feedback ? compression::encode_payload_with_feedback(*compressor_, *s.feedback,
                                                                         g, body, rng)
                             : compressor_->encode(g, body, rng);
        }
        h.count = bytes;
      } else if (k == PsKind::Finish) {
        h.count = stats_.pushes;
      }
      detail::write_header(h, s.out);
      const std::size_t total = detail::kPsHeaderBytes + bytes;
      s.send = t.isend(s.rank, tag_, std::span<const std::byte>(s.out).first(total));
      stats_.bytes_pushed += total;
    }
    for (Shard& s : shards_) s.recv = t.irecv(s.rank, tag_, s.in);
  } catch (const Error& e) {
    fail(e);
  }
}

void PsWorker::receive_from_servers() {
  Transport& t = comm_.transport();
  std::vector<Request*> all;
  for (Shard& s : shards_) {
    all.push_back(&s.send);
    all.push_back(&s.recv);
  }
  const auto start = Clock::now();
  try {
    // Twice the timeout: a server holds an answer for a silent worker up to the timeout before
    // it declares that worker dead and says so; this wait must outlast that verdict.
    wait_sleeping(t, all, start + 2 * comm_.timeout());
  } catch (const Error& e) {
    fail(e);
  }
  stats_.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  std::int64_t clock = std::numeric_limits<std::int64_t>::max();
  std::uint64_t applied = std::numeric_limits<std::uint64_t>::max();
  std::optional<Error> error;
  for (Shard& s : shards_) {
    const std::size_t got = s.recv.bytes();
    stats_.bytes_pulled += got;
    const std::string from = "server rank " + std::to_string(s.rank);
    try {
      const PsHeader h = detail::read_header(s.in, got, from);
      if (h.kind == PsKind::Abort) {
        const std::size_t text = std::min<std::size_t>(got - detail::kPsHeaderBytes, h.count);
        const auto* p = reinterpret_cast<const char*>(s.in.data() + detail::kPsHeaderBytes);
        const auto code = static_cast<ErrorCode>(h.error_code);
        throw Error(code == ErrorCode::Timeout ? code : ErrorCode::PeerFailure,
                    from + " stopped the run: " + std::string(p, text));
      }
      if (h.kind == PsKind::Done) {
        if (h.count != stats_.pushes) {
          throw Error(ErrorCode::Internal, "parameter server: " + from + " applied " +
                                               std::to_string(h.count) + " pushes of worker rank " +
                                               std::to_string(comm_.rank()) + ", which pushed " +
                                               std::to_string(stats_.pushes));
        }
        continue;
      }
      detail::expect_kind(h, PsKind::Params, from);
      if (h.count != s.size() || got != detail::kPsHeaderBytes + s.size() * sizeof(float)) {
        throw Error(ErrorCode::Mismatch,
                    "parameter server: " + from + " answered " + std::to_string(h.count) +
                        " parameters, its shard has " + std::to_string(s.size()));
      }
      std::memcpy(parameters_.data() + s.begin, s.in.data() + detail::kPsHeaderBytes,
                  s.size() * sizeof(float));
      s.clock = h.clock;
      s.applied = h.applied;
      clock = std::min(clock, h.clock);
      applied = std::min(applied, h.applied);
      ++stats_.pulls;
    } catch (const Error& e) {
      if (!error) error = e;
    }
  }
  if (error) fail(*error);
  if (clock != std::numeric_limits<std::int64_t>::max()) {
    clock_ = clock;
    servers_applied_ = applied;
  }
}

void PsWorker::push_pull(std::span<const float> gradient, double lr) {
  require(!finished_, "push_pull", "called after finish()");
  require(gradient.size() == parameters_.size(), "gradient",
          "has " + std::to_string(gradient.size()) + " elements, the parameters " +
              std::to_string(parameters_.size()));
  require(std::isfinite(lr), "lr", "must be finite");
  require(std::all_of(gradient.begin(), gradient.end(), [](float x) { return std::isfinite(x); }),
          "gradient", "holds NaN or Inf (nothing was pushed)");
  const std::int64_t staleness = static_cast<std::int64_t>(stats_.pushes) - clock_;
  stats_.max_staleness = std::max(stats_.max_staleness, staleness);
  stats_.staleness_sum += static_cast<double>(staleness);
  send_to_servers(static_cast<std::uint8_t>(PsKind::Push), gradient, lr);
  ++stats_.pushes;
  receive_from_servers();
}

void PsWorker::refresh() {
  require(!finished_, "refresh", "called after finish()");
  send_to_servers(static_cast<std::uint8_t>(PsKind::Pull), {}, 0);
  receive_from_servers();
}

void PsWorker::finish() {
  if (finished_) return;
  finished_ = true;
  send_to_servers(static_cast<std::uint8_t>(PsKind::Finish), {}, 0);
  receive_from_servers();
}

bool PsWorker::scale_residuals(float factor) {
  bool any = false;
  for (Shard& s : shards_) {
    if (s.feedback) {
      s.feedback->scale(factor);
      any = true;
    }
  }
  return any;
}

}  // namespace frugal

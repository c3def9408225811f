// The server's side of the parameter server: one shard's weights and velocity, pushes applied in
// arrival order, pull answers held back by the stale-synchronous bound, failures of workers.
#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>
#include <string>
#include <thread>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/error.hpp"
#include "ps_protocol.hpp"

namespace frugal {

using detail::PsHeader;
using detail::PsKind;

namespace {

enum class Waiting : std::uint8_t { None, AfterPush, Refresh };

}  // namespace

struct PsServer::Peer {
  int rank = 0;
  bool live = true;
  bool finished = false;
  std::uint64_t pushed = 0;        // pushes applied from this worker
  std::int64_t read_clock = 0;     // clock of the last answer sent to it
  std::uint64_t read_applied = 0;  // the shard's applied count when that answer was sent
  Waiting waiting = Waiting::None;
  std::uint64_t wait_for = 0;  // answer once every live worker has pushed this many steps
  std::vector<std::byte> in, out;
  Request recv, send;
  Clock::time_point last_heard = Clock::now();
};

// The state of one serve() call.
struct PsServer::Loop {
  PsServer& server;
  std::vector<Peer> peers;
  ServerReport report;
  std::vector<float> gradient;
  std::optional<Error> count_error;

  std::string name() const { return "server rank " + std::to_string(server.comm_.rank()); }

  // The clock: the fewest pushes of any worker still pushing (live and not finished).
  std::int64_t clock() const {
    std::uint64_t c = std::numeric_limits<std::uint64_t>::max();
    for (const Peer& p : peers) {
      if (p.live && !p.finished) c = std::min(c, p.pushed);
    }
    return c == std::numeric_limits<std::uint64_t>::max() ? std::numeric_limits<std::int64_t>::max()
                                                          : static_cast<std::int64_t>(c);
  }

  void post_receive(Peer& p) { p.recv = server.comm_.transport().irecv(p.rank, server.tag_, p.in); }

  void send(Peer& p, const PsHeader& h, std::span<const std::byte> body) {
    Transport& t = server.comm_.transport();
    // The worker took the previous answer before it sent the request this one answers.
    if (!p.send.done()) t.wait(p.send, Clock::now() + server.comm_.timeout());
    detail::write_header(h, p.out);
    std::copy(body.begin(), body.end(), p.out.begin() + detail::kPsHeaderBytes);
    const std::size_t total = detail::kPsHeaderBytes + body.size();
    p.send = t.isend(p.rank, server.tag_, std::span<const std::byte>(p.out).first(total));
    report.bytes_sent += total;
  }

  void answer(Peer& p, std::int64_t clock) {
    PsHeader h;
    h.kind = PsKind::Params;
    h.step = p.pushed;
    h.clock = clock;
    h.count = server.weights_.size();
    h.applied = report.applied;
    send(p, h, std::as_bytes(std::span<const float>(server.weights_)));
    p.read_clock = clock;
    p.read_applied = report.applied;
    p.waiting = Waiting::None;
  }

  // Sends every held answer the clock now allows.
  void flush() {
    const std::int64_t c = clock();
    for (Peer& p : peers) {
      if (p.live && p.waiting != Waiting::None &&
          c >= static_cast<std::int64_t>(
                   std::min<std::uint64_t>(p.wait_for, std::numeric_limits<std::int64_t>::max()))) {
        answer(p, std::min(c, static_cast<std::int64_t>(p.pushed)));
      }
    }
  }

  void apply(Peer& p, const PsHeader& h, std::span<const std::byte> body) {
    const std::string from = "worker rank " + std::to_string(p.rank);
    if (h.step != p.pushed) {
      throw Error(ErrorCode::Mismatch, "parameter server: " + from + " pushed step " +
                                           std::to_string(h.step) + ", expected " +
                                           std::to_string(p.pushed));
    }
    if (body.size() != h.count) {
      throw Error(ErrorCode::Mismatch, "parameter server: a push from " + from + " has " +
                                           std::to_string(body.size()) +
                                           " body bytes, its header " + std::to_string(h.count));
    }
    // Checked before the weights change: a push refused here leaves them as they were.
    const std::int64_t staleness = static_cast<std::int64_t>(h.step) - p.read_clock;
    if (staleness > server.options_.staleness) {
      throw Error(ErrorCode::Internal, "parameter server: a push of " + from + " is " +
                                           std::to_string(staleness) +
                                           " steps stale, beyond the bound " +
                                           std::to_string(server.options_.staleness));
    }
    const std::size_t n = server.weights_.size();
    if (server.compressor_) {
      server.compressor_->decode(body, gradient);
    } else {
      if (body.size() != n * sizeof(float)) {
        throw Error(ErrorCode::Mismatch, "parameter server: a dense push from " + from + " has " +
                                             std::to_string(body.size()) + " bytes for " +
                                             std::to_string(n) + " parameters");
      }
      std::memcpy(gradient.data(), body.data(), body.size());
    }
    // Momentum SGD as PyTorch's (dampening 0): v = μ·v + g (v = g at first), w −= lr·direction.
    // Each product is rounded on its own, as torch's separate mul_/add_ calls round.
    const auto mu = static_cast<float>(server.options_.momentum);
    const auto lr = static_cast<float>(h.lr);
    const bool first = report.applied == 0;
    float* w = server.weights_.data();
    float* v = server.velocity_.data();
    const float* g = gradient.data();
    for (std::size_t i = 0; i < n; ++i) {
      float d = g[i];
      if (mu != 0.0f) {
        const float scaled = first ? 0.0f : mu * v[i];
        v[i] = first ? g[i] : scaled + g[i];
        if (server.options_.nesterov) {
          const float ahead = mu * v[i];
          d = g[i] + ahead;
        } else {
          d = v[i];
        }
      }
      const float step = lr * d;
      w[i] = w[i] - step;
    }
    const std::uint64_t lag = report.applied - p.read_applied;
    report.max_staleness = std::max(report.max_staleness, staleness);
    report.staleness_sum += static_cast<double>(staleness);
    report.max_update_lag = std::max(report.max_update_lag, lag);
    report.update_lag_sum += static_cast<double>(lag);
    if (server.options_.record_order) report.order.emplace_back(p.rank, h.step);
    ++p.pushed;
    ++report.applied;
    ++report.applied_per_worker[static_cast<std::size_t>(p.rank)];
    const std::int64_t s = server.options_.staleness;
    p.waiting = Waiting::AfterPush;
    p.wait_for =
        static_cast<std::int64_t>(p.pushed) > s ? p.pushed - static_cast<std::uint64_t>(s) : 0;
  }

  // One message from `p`, already received.
  void handle(Peer& p) {
    const std::size_t got = p.recv.bytes();
    report.bytes_received += got;
    p.last_heard = Clock::now();
    const std::string from = "worker rank " + std::to_string(p.rank);
    const PsHeader h = detail::read_header(p.in, got, from);
    const std::span<const std::byte> body = std::span<const std::byte>(p.in).subspan(
        detail::kPsHeaderBytes, got - detail::kPsHeaderBytes);
    switch (h.kind) {
      case PsKind::Push:
        apply(p, h, body);
        break;
      case PsKind::Pull:
        p.waiting = Waiting::Refresh;
        p.wait_for = p.pushed;
        break;
      case PsKind::Finish: {
        p.finished = true;
        if (h.count != p.pushed && !count_error) {
          count_error =
              Error(ErrorCode::Internal, "parameter server: " + name() + " applied " +
                                             std::to_string(p.pushed) + " pushes of " + from +
                                             ", which pushed " + std::to_string(h.count));
        }
        PsHeader done;
        done.kind = PsKind::Done;
        done.count = p.pushed;
        send(p, done, {});
        return;  // nothing more comes from it
      }
      default:
        detail::expect_kind(h, PsKind::Push, from);
    }
    post_receive(p);
  }

  // `p` is gone (its transport failed, or it held others up past the timeout).
  void worker_failed(Peer& p, const Error& error) {
    p.live = false;
    p.recv.reset();
    p.send.reset();
    const std::string why = "worker rank " + std::to_string(p.rank) + " failed: " + error.what();
    if (server.options_.on_worker_failure == WorkerFailurePolicy::Continue) {
      report.failed_workers.push_back(p.rank);
      return;
    }
    abort_all(why, error.code());
    const Error e(error.code() == ErrorCode::Timeout ? ErrorCode::Timeout : ErrorCode::PeerFailure,
                  "parameter server: " + name() + ": " + why);
    server.comm_.fail(e);
    throw e;
  }

  // Tells every live, unfinished worker that the run stops, best effort within the timeout.
  void abort_all(const std::string& why, ErrorCode code) {
    Transport& t = server.comm_.transport();
    const std::string text = why.substr(0, detail::kPsAbortTextMax);
    std::vector<Request*> sends;
    for (Peer& p : peers) {
      if (!p.live || p.finished) continue;
      try {
        PsHeader h;
        h.kind = PsKind::Abort;
        h.error_code = static_cast<std::uint8_t>(code);
        h.count = text.size();
        send(p, h, std::as_bytes(std::span<const char>(text)));
        sends.push_back(&p.send);
      } catch (const Error&) {
        // That worker is gone too: nobody to tell.
      }
    }
    try {
      t.wait_all(sends, Clock::now() + server.comm_.timeout());
    } catch (const Error&) {
      // Best effort: a worker that does not take the notice times out by itself.
    }
  }

  // A held answer waits on the slowest workers: one of them silent past the timeout is taken for
  // dead, so that no worker waits forever on it. So is any worker silent past the timeout once
  // another has finished (its finish would never come).
  // True when it dropped a worker (policy Continue): the clock may have moved.
  bool check_stalls() {
    const std::int64_t c = clock();
    bool held = false, finished = false;
    for (const Peer& p : peers) {
      held = held ||
             (p.live && p.waiting != Waiting::None && static_cast<std::uint64_t>(c) < p.wait_for);
      finished = finished || p.finished;
    }
    if (!held && !finished) return false;
    const auto now = Clock::now();
    bool dropped = false;
    for (Peer& p : peers) {
      const bool blocking = finished || static_cast<std::int64_t>(p.pushed) == c;
      if (p.live && !p.finished && p.waiting == Waiting::None && blocking &&
          now - p.last_heard > server.comm_.timeout()) {
        worker_failed(p, Error(ErrorCode::Timeout,
                               "silent for " + std::to_string(server.comm_.timeout().count()) +
                                   " ms while other workers waited for it"));
        dropped = true;
      }
    }
    return dropped;
  }

  bool any_active() const {
    return std::any_of(peers.begin(), peers.end(),
                       [](const Peer& p) { return p.live && !p.finished; });
  }
};

PsServer::PsServer(Communicator& comm, std::size_t elements, ParameterServerOptions options)
    : comm_(comm), options_(std::move(options)) {
  tag_ = detail::ps_agree(comm_, options_, elements);
  const int workers = comm_.size() - options_.servers;
  require(comm_.rank() >= workers, "servers", "this rank is a worker's: use PsWorker");
  shard_ = comm_.rank() - workers;
  range_ = shard_range(elements, options_.servers, shard_);
  if (options_.compression.method != compression::Method::None) {
    compressor_ = compression::make_compressor(options_.compression);
  }
  const std::size_t n = range_.second - range_.first;
  weights_.resize(n);
  velocity_.assign(n, 0.0f);
  // The initial values from worker 0, then the first answer (clock 0) to every worker.
  Transport& t = comm_.transport();
  try {
    std::vector<std::byte> in(detail::kPsHeaderBytes + n * sizeof(float));
    Request r = t.irecv(0, tag_, in);
    t.wait(r, Clock::now() + comm_.timeout());
    const std::string from = "worker rank 0";
    const PsHeader h = detail::read_header(in, r.bytes(), from);
    detail::expect_kind(h, PsKind::Init, from);
    if (h.count != n || r.bytes() != in.size()) {
      throw Error(ErrorCode::Mismatch, "parameter server: worker rank 0 sent " +
                                           std::to_string(h.count) + " initial values for " +
                                           std::to_string(n));
    }
    std::memcpy(weights_.data(), in.data() + detail::kPsHeaderBytes, n * sizeof(float));
    init_bytes_received_ = r.bytes();
    PsHeader answer;
    answer.kind = PsKind::Params;
    answer.count = n;
    std::vector<std::byte> out(detail::kPsHeaderBytes + n * sizeof(float));
    detail::write_header(answer, out);
    std::memcpy(out.data() + detail::kPsHeaderBytes, weights_.data(), n * sizeof(float));
    std::vector<Request> sends;
    for (int w = 0; w < workers; ++w) sends.push_back(t.isend(w, tag_, out));
    std::vector<Request*> all;
    for (Request& s : sends) all.push_back(&s);
    t.wait_all(all, Clock::now() + comm_.timeout());
    init_bytes_sent_ = out.size() * static_cast<std::size_t>(workers);
  } catch (const Error& e) {
    comm_.fail(e);
    throw;
  }
}

PsServer::~PsServer() = default;

ServerReport PsServer::serve() {
  const int workers = comm_.size() - options_.servers;
  Loop loop{*this, std::vector<Peer>(static_cast<std::size_t>(workers)), {}, {}, {}};
  loop.report.server = shard_;
  loop.report.bytes_received = init_bytes_received_;
  loop.report.bytes_sent = init_bytes_sent_;
  loop.report.applied_per_worker.assign(static_cast<std::size_t>(workers), 0);
  loop.gradient.resize(weights_.size());
  const std::size_t n = weights_.size();
  const std::size_t dense = n * sizeof(float);
  const std::size_t body = compressor_ ? std::max(dense, compressor_->max_encoded_bytes(n)) : dense;
  Transport& t = comm_.transport();
  try {
    for (int w = 0; w < workers; ++w) {
      Peer& p = loop.peers[static_cast<std::size_t>(w)];
      p.rank = w;
      p.in.resize(detail::kPsHeaderBytes + body);
      p.out.resize(detail::kPsHeaderBytes + std::max(dense, detail::kPsAbortTextMax));
      loop.post_receive(p);
    }
    // Spin briefly, then sleep in growing steps: servers share cores with the workers.
    int idle = 0;
    while (loop.any_active()) {
      bool progressed = false;
      for (Peer& p : loop.peers) {
        if (!p.live || p.finished) continue;
        try {
          if (p.recv.valid() && t.test(p.recv)) {
            loop.handle(p);
            progressed = true;
          }
          if (!p.send.done()) t.test(p.send);
        } catch (const Error& e) {
          if (e.code() == ErrorCode::Internal) throw;
          loop.worker_failed(p, e);
          progressed = true;
        }
      }
      if (progressed) {
        loop.flush();
        idle = 0;
        continue;
      }
      if (loop.check_stalls()) {
        // Answers held for the dropped worker go out now: nobody else would wake the loop.
        loop.flush();
        continue;
      }
      if (++idle > 200) {
        std::this_thread::sleep_for(std::chrono::microseconds(std::min(idle - 200, 500)));
      } else {
        std::this_thread::yield();
      }
    }
    // The last answers (the Done of each finish) reach their workers before serve returns.
    std::vector<Request*> sends;
    for (Peer& p : loop.peers) {
      if (p.live) sends.push_back(&p.send);
    }
    t.wait_all(sends, Clock::now() + comm_.timeout());
  } catch (const Error& e) {
    if (!comm_.failed()) comm_.fail(e);
    throw;
  }
  if (loop.count_error) throw *loop.count_error;
  if (loop.report.failed_workers.size() == static_cast<std::size_t>(workers)) {
    throw Error(ErrorCode::PeerFailure,
                "parameter server: " + loop.name() + ": every worker failed");
  }
  return std::move(loop.report);
}

}  // namespace frugal

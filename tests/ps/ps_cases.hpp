// What the parameter-server tests share: a deterministic gradient (a quadratic per worker with a
// step-dependent term), one run of every rank's role, and the serial reference that replays the
// servers' recorded order of pushes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/rng.hpp"

namespace frugal::testing {

inline constexpr std::size_t kElements = 37;  // odd: shards of unequal sizes

inline std::vector<float> initial_parameters() {
  std::vector<float> p(kElements);
  for (std::size_t i = 0; i < kElements; ++i) p[i] = std::sin(0.7f * static_cast<float>(i)) * 2.0f;
  return p;
}

// Worker w's gradient at step t on parameters x: its own quadratic pulls x towards its own
// target, plus a term that changes with the step, so that every push is different.
inline std::vector<float> gradient_of(std::span<const float> x, int worker, std::uint64_t step) {
  std::vector<float> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float target = std::cos(static_cast<float>(i * 3 + static_cast<std::size_t>(worker)));
    const float scale =
        0.5f + 0.25f * static_cast<float>((i + static_cast<std::size_t>(worker)) % 3);
    g[i] = scale * (x[i] - target) +
           0.05f * std::sin(static_cast<float>(step) + 0.1f * static_cast<float>(i));
  }
  return g;
}

inline double lr_at(std::uint64_t step) {
  return 0.1 / (1.0 + 0.05 * static_cast<double>(step));
}

// What one rank saw.
struct PsRun {
  bool server = false;
  std::vector<float> parameters;  // worker: after the final refresh; server: its shard
  WorkerStats worker;
  std::uint64_t servers_applied = 0;  // worker: as its final refresh reported
  ServerReport report;
};

// Every rank's role for `steps` steps; `delay(rank, step)` sleeps a worker before its push.
inline PsRun run_ps(Communicator& comm, const ParameterServerOptions& o, std::uint64_t steps,
                    std::chrono::microseconds straggle = {}, int straggler = -1) {
  PsRun run;
  if (is_server_rank(comm.rank(), comm.size(), o.servers)) {
    run.server = true;
    PsServer server(comm, kElements, o);
    run.report = server.serve();
    run.parameters.assign(server.parameters().begin(), server.parameters().end());
    return run;
  }
  run.parameters = initial_parameters();
  if (comm.rank() != 0) std::fill(run.parameters.begin(), run.parameters.end(), -7.0f);
  PsWorker worker(comm, run.parameters, o);
  for (std::uint64_t t = 0; t < steps; ++t) {
    if (comm.rank() == straggler) std::this_thread::sleep_for(straggle);
    const std::vector<float> g = gradient_of(run.parameters, comm.rank(), t);
    worker.push_pull(g, lr_at(t));
  }
  worker.refresh();
  run.servers_applied = worker.servers_applied();
  worker.finish();
  run.worker = worker.stats();
  return run;
}

// The shard of every parameter.
inline std::vector<std::pair<std::size_t, std::size_t>> shards(int servers) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (int j = 0; j < servers; ++j) out.push_back(shard_range(kElements, servers, j));
  return out;
}

// Serial momentum SGD that applies, round by round, every worker's gradient (computed on the
// round's parameters) to each shard in the order that shard's server recorded. Valid for s = 0,
// where a round's pushes are all computed on the parameters of the round before. Compressed
// pushes are compressed here the same way (per worker and shard, its own error feedback, the
// same random positions).
inline std::vector<float> serial_reference(const ParameterServerOptions& o, int workers,
                                           std::uint64_t steps,
                                           const std::vector<ServerReport>& reports) {
  std::vector<float> x = initial_parameters();
  std::vector<float> v(kElements, 0.0f);
  const auto cuts = shards(o.servers);
  std::vector<bool> first(cuts.size(), true);
  std::unique_ptr<compression::Compressor> compressor;
  if (o.compression.method != compression::Method::None) {
    compressor = compression::make_compressor(o.compression);
  }
  std::map<std::pair<int, std::size_t>, compression::ErrorFeedback> feedback;
  std::vector<std::size_t> cursor(cuts.size(), 0);
  const auto mu = static_cast<float>(o.momentum);
  for (std::uint64_t t = 0; t < steps; ++t) {
    std::vector<std::vector<float>> grads;
    for (int w = 0; w < workers; ++w) grads.push_back(gradient_of(x, w, t));
    for (std::size_t j = 0; j < cuts.size(); ++j) {
      const auto [begin, end] = cuts[j];
      const auto& order = reports[j].order;
      for (; cursor[j] < order.size() && order[cursor[j]].second == t; ++cursor[j]) {
        const int w = order[cursor[j]].first;
        std::vector<float> g(
            grads[static_cast<std::size_t>(w)].begin() + static_cast<std::ptrdiff_t>(begin),
            grads[static_cast<std::size_t>(w)].begin() + static_cast<std::ptrdiff_t>(end));
        if (compressor) {
          std::vector<std::byte> payload(compressor->max_encoded_bytes(g.size()));
          compression::Rng rng(o.seed, static_cast<std::uint64_t>(w), t, begin);
          std::size_t bytes = 0;
          if (o.error_feedback) {
            auto it = feedback.try_emplace({w, j}, g.size()).first;
            bytes =
                compression::encode_payload_with_feedback(*compressor, it->second, g, payload, rng);
          } else {
            bytes = compressor->encode(g, payload, rng);
          }
          compressor->decode(std::span(payload).first(bytes), g);
        }
        const auto lr = static_cast<float>(lr_at(t));
        for (std::size_t i = begin; i < end; ++i) {
          const float gi = g[i - begin];
          float d = gi;
          if (mu != 0.0f) {
            const float scaled = first[j] ? 0.0f : mu * v[i];
            v[i] = first[j] ? gi : scaled + gi;
            if (o.nesterov) {
              const float ahead = mu * v[i];
              d = gi + ahead;
            } else {
              d = v[i];
            }
          }
          const float step = lr * d;
          x[i] = x[i] - step;
        }
        first[j] = false;
      }
    }
  }
  for (std::size_t j = 0; j < cuts.size(); ++j) {
    EXPECT_EQ(cursor[j], reports[j].order.size()) << "server " << j << ": pushes out of rounds";
  }
  return x;
}

inline double max_abs_difference(std::span<const float> a, std::span<const float> b) {
  double m = a.size() == b.size() ? 0.0 : INFINITY;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return m;
}

}  // namespace frugal::testing

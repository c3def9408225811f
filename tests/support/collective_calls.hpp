#pragma once
// One call of every collective, and one parameter disagreement of each collective, for the
// agreement tests in-process (tests/collective) and under mpirun (tests/mpi).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <utility>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/communicator.hpp"

namespace frugal::testing {

// One call of each kind of collective, with buffers sized for comm.size() ranks. Allreduce comes
// twice: small (its block travels inline with the payload) and large (block first, then ring).
struct Call {
  const char* name;
  std::function<void(Communicator&)> run;
};

inline std::vector<Call> every_collective() {
  return {
      {"allreduce-16",
       [](Communicator& comm) {
         std::vector<float> x(16, 1.0f);
         allreduce(comm, std::span<float>(x));
       }},
      {"allreduce-100000",
       [](Communicator& comm) {
         std::vector<float> x(100000, 1.0f);
         AllreduceOptions o;
         o.algorithm = AllreduceAlgorithm::Ring;
         allreduce(comm, std::span<float>(x), o);
       }},
      {"reduce_scatter",
       [](Communicator& comm) {
         std::vector<float> x(1000, 1.0f);
         reduce_scatter(comm, std::span<float>(x));
       }},
      {"allgather",
       [](Communicator& comm) {
         std::vector<std::byte> mine(64), out(64 * static_cast<std::size_t>(comm.size()));
         allgather(comm, mine, out);
       }},
      {"allgatherv",
       [](Communicator& comm) {
         std::vector<std::size_t> counts;
         for (int r = 0; r < comm.size(); ++r)
           counts.push_back(8 * static_cast<std::size_t>(r + 1));
         std::vector<std::byte> mine(counts[static_cast<std::size_t>(comm.rank())]);
         std::vector<std::byte> out(4 * static_cast<std::size_t>(comm.size() * (comm.size() + 1)));
         allgatherv(comm, mine, out, counts);
       }},
      {"broadcast",
       [](Communicator& comm) {
         std::vector<std::byte> x(1000);
         broadcast(comm, x, 0);
       }},
      {"alltoall",
       [](Communicator& comm) {
         std::vector<std::byte> send(16 * static_cast<std::size_t>(comm.size())), recv(send.size());
         alltoall(comm, send, recv);
       }},
      {"alltoallv",
       [](Communicator& comm) {
         // Rank r sends r + q + 1 bytes to rank q: symmetric, so recv_counts == send_counts.
         std::vector<std::size_t> counts;
         for (int q = 0; q < comm.size(); ++q) {
           counts.push_back(static_cast<std::size_t>(comm.rank() + q + 1));
         }
         const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
         std::vector<std::byte> send(total), recv(total);
         alltoallv(comm, send, counts, recv, counts);
       }},
      {"barrier", [](Communicator& comm) { barrier(comm); }},
  };
}

// A parameter one rank (first or last) passes differently from the others.
struct ParameterCase {
  const char* what;
  const char* needle;
  std::function<void(Communicator&, bool odd)> run;
};

inline std::vector<ParameterCase> parameter_cases() {
  auto ranks = [](const Communicator& comm) { return static_cast<std::size_t>(comm.size()); };
  return {
      {"reduce_scatter count", "element count of this reduce_scatter",
       [](Communicator& comm, bool odd) {
         std::vector<float> x(odd ? 1001 : 1000, 1.0f);
         reduce_scatter(comm, std::span<float>(x));
       }},
      {"reduce_scatter dtype", "dtype of this reduce_scatter",
       [](Communicator& comm, bool odd) {
         if (odd) {
           std::vector<std::int32_t> x(1000, 1);
           reduce_scatter(comm, std::span<std::int32_t>(x));
         } else {
           std::vector<float> x(1000, 1.0f);
           reduce_scatter(comm, std::span<float>(x));
         }
       }},
      {"reduce_scatter op", "reduce op of this reduce_scatter",
       [](Communicator& comm, bool odd) {
         std::vector<float> x(1000, 1.0f);
         reduce_scatter(comm, std::span<float>(x), odd ? ReduceOp::Average : ReduceOp::Sum);
       }},
      {"allgather count", "byte count of each rank's block of this allgather",
       [ranks](Communicator& comm, bool odd) {
         const std::size_t n = odd ? 48 : 64;
         std::vector<std::byte> mine(n), out(n * ranks(comm));
         allgather(comm, mine, out);
       }},
      {"allgatherv total", "total byte count",
       [ranks](Communicator& comm, bool odd) {
         std::vector<std::size_t> counts(ranks(comm), 8);
         if (odd) counts[0] = 16;
         std::vector<std::byte> mine(counts[static_cast<std::size_t>(comm.rank())]);
         std::vector<std::byte> out(std::accumulate(counts.begin(), counts.end(), std::size_t{0}));
         allgatherv(comm, mine, out, counts);
       }},
      {"allgatherv counts, same total", "counts array of this allgatherv",
       [ranks](Communicator& comm, bool odd) {
         // The odd rank swaps the first two entries: same total, same own size on rank >= 2.
         std::vector<std::size_t> counts(ranks(comm), 8);
         counts[0] = 4;
         counts[1] = 12;
         if (odd) std::swap(counts[0], counts[1]);
         std::vector<std::byte> mine(counts[static_cast<std::size_t>(comm.rank())]);
         std::vector<std::byte> out(8 * ranks(comm));
         allgatherv(comm, mine, out, counts);
       }},
      {"broadcast root", "root of this broadcast",
       [](Communicator& comm, bool odd) {
         std::vector<std::byte> x(1000);
         broadcast(comm, x, odd ? comm.size() - 1 : 0);
       }},
      {"broadcast count", "byte count of this broadcast",
       [](Communicator& comm, bool odd) {
         std::vector<std::byte> x(odd ? 999 : 1000);
         broadcast(comm, x, 0);
       }},
      {"alltoall count", "byte count of each block of this alltoall",
       [ranks](Communicator& comm, bool odd) {
         std::vector<std::byte> send((odd ? 24 : 16) * ranks(comm)), recv(send.size());
         alltoall(comm, send, recv);
       }},
      {"alltoallv pair", "block sizes of this alltoallv",
       [ranks](Communicator& comm, bool odd) {
         // Everyone sends 8 bytes to everyone, but the odd rank expects 16 from one peer and 0
         // from another (P >= 3): its total still matches, only the pairs do not. With P = 2 it
         // expects 12 from its one peer.
         std::vector<std::size_t> send_counts(ranks(comm), 8), recv_counts = send_counts;
         const auto me = static_cast<std::size_t>(comm.rank());
         const std::size_t next = (me + 1) % ranks(comm),
                           prev = (me + ranks(comm) - 1) % ranks(comm);
         if (odd && next != prev) {
           recv_counts[next] += 8;
           recv_counts[prev] -= 8;
         } else if (odd) {
           recv_counts[next] = 12;
         }
         std::vector<std::byte> send(8 * ranks(comm)),
             recv(std::accumulate(recv_counts.begin(), recv_counts.end(), std::size_t{0}));
         alltoallv(comm, send, send_counts, recv, recv_counts);
       }},
      {"alltoallv send", "block sizes of this alltoallv",
       [ranks](Communicator& comm, bool odd) {
         // The odd rank sends one peer 4 bytes more than that peer expects.
         std::vector<std::size_t> send_counts(ranks(comm), 8), recv_counts = send_counts;
         if (odd) send_counts[(static_cast<std::size_t>(comm.rank()) + 1) % ranks(comm)] = 12;
         std::vector<std::byte> send(
             std::accumulate(send_counts.begin(), send_counts.end(), std::size_t{0})),
             recv(8 * ranks(comm));
         alltoallv(comm, send, send_counts, recv, recv_counts);
       }},
  };
}

}  // namespace frugal::testing

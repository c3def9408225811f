#pragma once

// The cost model of frugal's allreduces: for every method × algorithm that frugal-bench runs,
// the time of one call from (n, P, link rate, link latency, cores) and the calibrated kernel
// speeds. Each algorithm is a sequence of rounds; a round costs its latency plus the larger of
// the bytes a rank sends and receives over its link (full duplex, a star through one switch, as
// bench/cluster/run builds it) and of the bytes one connection carries both ways at once (at the
// link's efficiency share), and the computation between rounds runs on cores shared by the
// ranks of one machine. Bytes come from the compressors' own encoded_bytes. Pure: no MPI.
//
//   dense ring            2(P−1) rounds of m/P           = seed 002's 2·γ·m·(P−1)/P
//   recursive doubling    log2 P rounds of m
//   Rabenseifner          2·log2 P rounds, m·(P−1)/P each way in total
//   two-phase             2 rounds: P−1 chunk payloads out and in, twice
//   allgather             1 round: P−1 whole payloads out and in
//   sparse allgather      the same with top-k payloads
//   sparse recursive dbl  log2 P rounds, the merged vector (at most dense) each
// and every frugal call first agrees on its parameters in log2 P rounds of a small block.
// docs/performance.md ("Cost model") states the terms and their limits.

#include <cstddef>
#include <string>

#include "calibration.hpp"
#include "frugal/compression/compressor.hpp"
#include "options.hpp"

namespace frugal::model {

struct Link {
  double bytes_per_second = 125e6;  // the shaped rate (tc counts frames, headers included)
  double latency_seconds = 0;       // added one-way delay between two ranks (netem, distance)
  // Share of a frame that is TCP payload: 1448 of 1514 bytes at MTU 1500 (Ethernet, IP and
  // TCP with timestamps). tc's rate counts whole frames.
  double payload_share = 1448.0 / 1514.0;
  // Share of the payload rate that one connection reaches while it carries bulk data in both
  // directions at once (MPI's TCP BTL keeps one connection per pair of ranks, so pairwise
  // exchanges are such traffic), measured (see fit_efficiency); 1 on an ideal link.
  double efficiency = 1.0;
};

struct Scenario {
  std::size_t elements = 0;  // float32 elements of the buffer (n; m = 4n bytes)
  int ranks = 0;             // P
  // Cores the ranks of one machine share. P ranks on C cores stretch every computation by
  // max(1, P / C); 0 means one core per rank (no stretch), as on a real cluster.
  int cores = 0;
  Link link;
};

struct Prediction {
  double seconds = 0;          // the whole call
  double compute_seconds = 0;  // kernels (scan, encode, decode, reduce), stretched
  double wire_seconds = 0;     // bytes over the link (or through the TCP stack, if slower)
  double latency_seconds = 0;  // rounds × per-message latency
  double wire_bytes = 0;       // bytes the busiest rank sends
  int rounds = 0;              // message rounds, agreement included
};

// The time of one allreduce by `method` (kind, algorithm, compression method) with the
// compression parameters of `config` (its method field is ignored). The Auto algorithm is
// resolved with the library's own choose_allreduce_algorithm. MPI_Allreduce is modelled as the
// faster of recursive doubling and Rabenseifner without the agreement (the pairwise shapes
// Open MPI's tuned component ran in the measurements). Throws frugal::Error(InvalidArgument) naming
// `ranks` (< 1), `elements` (0), `cores` (< 0), `rate` (<= 0), `latency` (< 0) or `method` (memcpy,
// an algorithm the method cannot run, a method without calibrated kernels).
Prediction predict(const bench::Method& method, const compression::CompressionConfig& config,
                   const Scenario& scenario, const Calibration& calibration);

// Bytes one rank sends in a dense ring allreduce of `bytes`: 2·bytes·(P−1)/P.
double ring_wire_bytes(double bytes, int ranks);

// The algorithm a method runs at (n, P): its own, or Auto's choice.
AllreduceAlgorithm resolved_algorithm(const bench::Method& method,
                                      const compression::CompressionConfig& config,
                                      std::size_t elements, int ranks);

// "dense/ring", "mpi", "onebit/two_phase", ...: a row's name in the model's tables.
std::string method_label(const bench::Method& method, const compression::CompressionConfig& config,
                         std::size_t elements, int ranks);

}  // namespace frugal::model

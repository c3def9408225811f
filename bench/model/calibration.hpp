#pragma once

// The measured half of the cost model: how fast this machine's cores run frugal's kernels and
// pass a message through the kernel's TCP stack, one core, no contention. Written once by
// `frugal-model calibrate` into a small versioned text file and read back by every prediction.

#include <array>
#include <cstddef>
#include <iosfwd>
#include <string>

#include "frugal/compression/compressor.hpp"

namespace frugal::model {

// The first line of a calibration file; another format or version is refused by name.
inline constexpr std::string_view kCalibrationMagic = "frugal-model-calibration";
inline constexpr int kCalibrationVersion = 2;

// One compression method's kernels, in seconds per element of the buffer they run over.
struct MethodKernels {
  // encode_payload_with_feedback: compensate, encode, new residual (two-phase's worker and
  // server encodes, which never read the reconstruction).
  double encode_payload = 0;
  // encode_with_feedback: the same, also writing the reconstruction (allgather, top-k).
  double encode_apply = 0;
  // decode into a buffer (two-phase's last step, every chunk).
  double decode = 0;
  // decode_add of one payload (allgather: P of them). For top-k: seconds per selected element.
  double decode_add = 0;
  // decode_sum of k payloads costs n · (decode_sum_base + k · decode_sum_payload).
  double decode_sum_base = 0;
  double decode_sum_payload = 0;
};

// The compressed methods the model knows, in this order in the file.
inline constexpr std::array<compression::Method, 6> kModelMethods{
    compression::Method::Fp16,   compression::Method::Bf16,    compression::Method::TopK,
    compression::Method::OneBit, compression::Method::Ternary, compression::Method::Qsgd};

// Every kernel's speed at one buffer size.
struct Kernels {
  // Seconds per element (float32) unless noted.
  double scan = 0;          // max_compensated_magnitude over input + residual (every compressed
                            // allreduce scans its input before agreeing)
  double reduce = 0;        // a[i] += b[i]: the dense algorithms' reduction
  double fill = 0;          // zeroing the output ahead of the allgather's decode_adds
  double fresh = 0;         // allocating and zeroing a new buffer of that many floats (sparse
                            // recursive doubling receives each step into a new dense-sized one)
  double sparse_merge = 0;  // seconds per entry of a two-way merge of sorted (index, value)
                            // pairs (sparse recursive doubling)
  std::array<MethodKernels, kModelMethods.size()> methods{};

  // Throws frugal::Error(InvalidArgument) naming `method` if the model has no kernels for it.
  const MethodKernels& kernels(compression::Method method) const;
  MethodKernels& kernels(compression::Method method);
};

struct Calibration {
  std::string machine;  // free text: CPU model and core count, for the reader
  // Kernels run at a cache-resident and at a memory-bound size; between the two the model
  // interpolates each speed in log(n), outside it takes the nearer one.
  std::size_t small_elements = 0;
  std::size_t large_elements = 0;
  Kernels small;
  Kernels large;
  // The per-message time of frugal over MPI over TCP (see transport_fit.hpp): software latency
  // and scheduling, before any link delay.
  double message_seconds = 0;
  // CPU time of one more message in a round that talks to several peers at once: a small send
  // and its receive through the loopback TCP stack (the system calls), measured by calibrate.
  double post_seconds = 0;
  // CPU seconds per byte to push a stream through the TCP stack (sender and receiver
  // together), the bound when the stack, not the link, is the bottleneck.
  double stack_seconds_per_byte = 0;

  // The kernels' speeds at n elements.
  Kernels at(double n) const;
};

// Writes the file: magic and version line, then one "key value" per line.
void write_calibration(std::ostream& out, const Calibration& calibration);

// Reads a file written by write_calibration. `source` names it in messages. Throws
// frugal::Error(InvalidArgument) naming the calibration file when the magic or version differ
// ("another format or version"), a key is unknown, repeated or missing, or a value is not a
// finite number >= 0.
Calibration read_calibration(std::istream& in, const std::string& source);
Calibration load_calibration(const std::string& path);

}  // namespace frugal::model

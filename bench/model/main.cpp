// frugal-model: the cost model of frugal's allreduces. Calibrates kernel speeds once, predicts
// frugal-bench's rows beside their measurements, and projects to cluster sizes this machine
// cannot run. See `frugal-model --help` and docs/performance.md ("Cost model").

#include <exception>
#include <iostream>
#include <string>

#include "commands.hpp"
#include "frugal/error.hpp"
#include "options.hpp"

namespace {

using namespace frugal::model;
using frugal::bench::UsageError;

constexpr int kUsageExit = 2;

const char* const kHelp = R"(Usage:
  frugal-model calibrate --transport ROWS.jsonl --out FILE [--elements SMALL,LARGE]
                         [--repeats R]
  frugal-model compare --calibration FILE --rate RATE [--latency TIME] [--cores C]
                       [--efficiency X | --fit-efficiency] [--markdown] ROWS.jsonl...
  frugal-model project --calibration FILE [--elements N] [--ranks LIST] [--rates LIST]
                       [--latency TIME] [--cores C] [--methods LIST] [--message-latency TIME]
                       [--no-stack-cost] [--markdown]
  frugal-model --help

The cost model of frugal's allreduces (docs/performance.md, "Cost model"). A call is a
sequence of message rounds plus computation: a round costs the per-message latency (plus a
message's CPU time per extra peer it talks to) plus the slowest of: the larger of the bytes a
rank sends and receives at the link's payload rate, the bytes one connection carries both ways
at the link's efficiency share of that rate, and the TCP stack's CPU time for those bytes;
computation is the calibrated kernels' time per element, stretched by max(1, P / C) when P
ranks share C cores. Payload bytes come from the compressors' own encoded_bytes.

calibrate   times every kernel on one core (encode with error feedback, decode, decode_add,
            decode_sum, input scan, dense reduction, fresh buffers, sparse merge) at the two
            --elements sizes (default 262144,25600000: in cache and in memory; the model
            interpolates in log n between them), the fastest of --repeats runs (default 9),
            and a 64-byte message over loopback TCP (the CPU time of one more message), and
            takes the transport's per-message latency and TCP CPU per byte from
            --transport: frugal-bench JSON rows of the dense ring at P = 2 on an unshaped link,
            a small and a large size (bench/model/validate makes them). Writes --out.
compare     reads frugal-bench --json files and prints each row's measured median beside the
            model's prediction for it at --rate, with the ratio predicted / measured and the
            model's bytes per rank beside the measured ones; rows within 25% are marked ok, and
            a miss that still lies between the fastest and the slowest measured iteration
            "MISS, in range" (the measurement's own spread).
            The rows do not record compression parameters: the model takes frugal-bench's
            defaults, and marks a row "bytes differ" when the measured bytes say otherwise.
            --fit-efficiency takes the link's efficiency (the share of the payload rate a
            connection busy both ways reaches under MPI) from the largest dense ring row at
            P = 2, marked "fit" (not a prediction); --efficiency sets it (default 1).
project     prints predicted times without measuring, for every --ranks (default
            16,32,64,128,256,512,1024) and --rates (default 1gbit,10gbit,25gbit,100gbit) at
            --elements (default 25600000), with each method's speedup over the faster of the
            dense ring and MPI_Allreduce, and the largest P at which it still pays.

Options:
  --rate RATE       link rate as tc writes it: 100mbit, 1gbit, 25gbit (decimal)
  --latency TIME    one-way delay added between two ranks: 0, 50us, 1ms (default 0)
  --cores C         cores the ranks share (default: compare, this machine's cores, where
                    frugal-bench ran all ranks; project 0 = one core per rank, no stretch)
  --methods LIST    project: dense algorithms and compressed methods as frugal-bench's
                    --algorithms and --methods take them, e.g. ring,mpi,onebit:two_phase
                    (default: every method and algorithm)
  --message-latency TIME  project: per-message software latency instead of the calibrated one
                    (which on 2 shared cores holds scheduling delays a cluster node does not have)
  --no-stack-cost   project: no CPU per byte in the transport (RDMA, or a TCP stack with cores
                    of its own) instead of the calibrated TCP stack cost
  --markdown        tables in Markdown (for bench/results/model/)

Exit status: 0, 1 on a runtime error, 2 on bad input (the message names the option or file).
)";

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << kHelp;
      return 0;
    }
    if (command == "calibrate") return calibrate_command(argc, argv);
    if (command == "compare") return compare_command(argc, argv);
    if (command == "project") return project_command(argc, argv);
    throw UsageError(command.empty()
                         ? "needs a command: calibrate, compare or project"
                         : "unknown command '" + command + "' (calibrate, compare, project)");
  } catch (const UsageError& e) {
    std::cerr << "frugal-model: " << e.what() << "\n(frugal-model --help lists the options)\n";
    return kUsageExit;
  } catch (const frugal::Error& e) {
    std::cerr << "frugal-model: " << e.what() << "\n";
    return e.code() == frugal::ErrorCode::InvalidArgument ? kUsageExit : 1;
  } catch (const std::exception& e) {
    std::cerr << "frugal-model: error: " << e.what() << "\n";
    return 1;
  }
}

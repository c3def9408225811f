// The messages of the parameter server (parameter_server.hpp): a fixed header, then a body.
// Every message of one PsWorker/PsServer group travels on the one tag the constructors took;
// MPI's non-overtaking rule keeps each pair's messages in order, and each side posts one
// receive per peer at a time, so kinds never need matching by tag.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/communicator.hpp"

namespace frugal::detail {

enum class PsKind : std::uint8_t {
  Init = 1,    // worker 0 → server: the shard's initial values (floats)
  Push = 2,    // worker → server: step, clock read, lr; body: dense floats or a payload
  Pull = 3,    // worker → server: refresh request (no body)
  Finish = 4,  // worker → server: count = the worker's pushes
  Params = 5,  // server → worker: step answered, clock; body: the shard's floats
  Done = 6,    // server → worker: count = pushes applied from this worker
  Abort = 7,   // server → worker: count = the failed worker's rank; body: the reason (text)
};

inline constexpr std::uint32_t kPsMagic = 0x31535046;  // "FPS1"
inline constexpr std::size_t kPsAbortTextMax = 512;

struct PsHeader {
  std::uint32_t magic = kPsMagic;
  PsKind kind = PsKind::Init;
  std::uint8_t error_code = 0;  // Abort: the ErrorCode the worker throws
  std::uint16_t reserved = 0;
  std::uint64_t step = 0;
  std::int64_t clock = 0;
  double lr = 0;
  std::uint64_t count = 0;    // body bytes (Push, Abort), elements (Init, Params), or a count
  std::uint64_t applied = 0;  // Params: pushes the shard had applied (all workers)
};
inline constexpr std::size_t kPsHeaderBytes = sizeof(PsHeader);

inline void write_header(const PsHeader& header, std::span<std::byte> out) {
  std::memcpy(out.data(), &header, kPsHeaderBytes);
}

// The header of a received message of `received` bytes; throws Mismatch (naming `from`) when the
// bytes are too few or not a parameter-server message.
PsHeader read_header(std::span<const std::byte> message, std::size_t received,
                     const std::string& from);

// What a message's body must be for `kind`: Mismatch naming `from` otherwise.
void expect_kind(const PsHeader& header, PsKind kind, const std::string& from);

// Local checks of options and sizes ("servers", "staleness", "momentum", "nesterov",
// "parameters", "compression") followed by the vote over every rank (term_agreement.hpp):
// InvalidArgument naming the parameter or Mismatch, on every rank alike. Returns the tag every
// message of the group uses.
Tag ps_agree(Communicator& comm, const ParameterServerOptions& options, std::size_t elements);

// The rank of server `shard` and the number of workers.
inline int server_rank(const Communicator& comm, int servers, int shard) {
  return comm.size() - servers + shard;
}

}  // namespace frugal::detail

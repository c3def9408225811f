// The parameter server's shard cut, option checks and the agreement every rank starts with.
#include <array>
#include <bit>
#include <cmath>
#include <string>
#include <string_view>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/error.hpp"
#include "ps_protocol.hpp"
#include "term_agreement.hpp"

namespace frugal {

std::pair<std::size_t, std::size_t> shard_range(std::size_t elements, int servers, int shard) {
  require(servers >= 1 && static_cast<std::size_t>(servers) <= elements, "servers",
          "must be in [1, parameters] (every shard holds at least one parameter)");
  require(shard >= 0 && shard < servers, "shard", "must be in [0, servers)");
  // ⌊n·j/S⌋ = q·j + ⌊r·j/S⌋ with n = q·S + r: no product of n can overflow.
  const auto s = static_cast<std::size_t>(servers);
  const std::size_t q = elements / s, r = elements % s;
  const auto cut = [&](int j) {
    const auto u = static_cast<std::size_t>(j);
    return q * u + r * u / s;
  };
  return {cut(shard), cut(shard + 1)};
}

bool is_server_rank(int rank, int size, int servers) noexcept {
  return rank >= size - servers && rank < size;
}

namespace detail {

namespace {

constexpr std::array<std::string_view, 6> kProblemNames = {"servers",  "staleness",  "momentum",
                                                           "nesterov", "parameters", "compression"};

OptionProblem problem_of(const ParameterServerOptions& o, int size, std::size_t elements) {
  if (o.servers < 1 || o.servers >= size) {
    return {"servers", "must be in [1, " + std::to_string(size - 1) + "] (the last S of the " +
                           std::to_string(size) +
                           " ranks serve; at least one rank must work), got " +
                           std::to_string(o.servers)};
  }
  if (o.staleness < 0) {
    return {"staleness", "must be >= 0 (or unbounded), got " + std::to_string(o.staleness)};
  }
  if (!(o.momentum >= 0 && o.momentum < 1)) {
    return {"momentum", "must be in [0, 1), got " + std::to_string(o.momentum)};
  }
  if (o.nesterov && o.momentum == 0) return {"nesterov", "needs momentum > 0"};
  if (elements < static_cast<std::size_t>(o.servers)) {
    return {"parameters", std::to_string(elements) + " parameters cannot fill " +
                              std::to_string(o.servers) + " shards"};
  }
  if (o.compression.topk_scope != compression::TopKScope::Global) {
    return {"compression",
            "top-k per tensor needs tensor boundaries, and a shard is one flat "
            "range: use topk_scope global"};
  }
  if (o.compression.gtopk) {
    return {"compression", "gtopk cuts a sparse allreduce's sum, which the server does not run"};
  }
  try {
    compression::make_compressor(o.compression);
  } catch (const Error& e) {
    return {"compression", e.what()};
  }
  return {};
}

// Every field that shapes a payload, so that ranks with different compressors disagree here
// rather than at the first decode.
std::uint64_t compression_key(const compression::CompressionConfig& c) {
  const std::array<std::uint64_t, 13> fields = {static_cast<std::uint64_t>(c.method),
                                                static_cast<std::uint64_t>(c.non_finite),
                                                c.k,
                                                std::bit_cast<std::uint64_t>(c.density),
                                                static_cast<std::uint64_t>(c.selection),
                                                std::bit_cast<std::uint64_t>(c.tolerance),
                                                static_cast<std::uint64_t>(c.values),
                                                static_cast<std::uint64_t>(c.scaling),
                                                c.bucket,
                                                std::bit_cast<std::uint32_t>(c.clip_sigma),
                                                static_cast<std::uint64_t>(c.bits),
                                                static_cast<std::uint64_t>(c.norm),
                                                c.stochastic_rounding ? 1U : 0U};
  return digest_of(fields);
}

}  // namespace

PsHeader read_header(std::span<const std::byte> message, std::size_t received,
                     const std::string& from) {
  if (received < kPsHeaderBytes || message.size() < kPsHeaderBytes) {
    throw Error(ErrorCode::Mismatch, "parameter server: a message of " + std::to_string(received) +
                                         " bytes from " + from + " is shorter than its header");
  }
  PsHeader h;
  std::memcpy(&h, message.data(), kPsHeaderBytes);
  if (h.magic != kPsMagic || h.kind < PsKind::Init || h.kind > PsKind::Abort) {
    throw Error(ErrorCode::Mismatch,
                "parameter server: a message from " + from + " is not a parameter-server message");
  }
  return h;
}

void expect_kind(const PsHeader& header, PsKind kind, const std::string& from) {
  if (header.kind != kind) {
    throw Error(ErrorCode::Mismatch, "parameter server: expected message kind " +
                                         std::to_string(static_cast<int>(kind)) + " from " + from +
                                         ", got " + std::to_string(static_cast<int>(header.kind)));
  }
}

Tag ps_agree(Communicator& comm, const ParameterServerOptions& o, std::size_t elements) {
  static constexpr std::array<const char*, 10> kTermNames = {
      "servers",     "staleness",         "momentum",
      "nesterov",    "compression",       "error_feedback",
      "seed",        "on_worker_failure", "the number of parameters",
      "record_order"};
  const std::array<std::uint64_t, 10> terms = {static_cast<std::uint64_t>(o.servers),
                                               static_cast<std::uint64_t>(o.staleness),
                                               std::bit_cast<std::uint64_t>(o.momentum),
                                               o.nesterov ? 1U : 0U,
                                               compression_key(o.compression),
                                               o.error_feedback ? 1U : 0U,
                                               o.seed,
                                               static_cast<std::uint64_t>(o.on_worker_failure),
                                               elements,
                                               o.record_order ? 1U : 0U};
  const OptionProblem problem = problem_of(o, comm.size(), elements);
  agree_on_options(comm, terms, kTermNames, kProblemNames, problem, CollectiveOptions{},
                   "parameter server", "their options");
  return comm.begin_collective();
}

}  // namespace detail
}  // namespace frugal

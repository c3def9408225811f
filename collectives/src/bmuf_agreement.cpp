#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <set>
#include <string_view>
#include <vector>

#include "bmuf_terms.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

constexpr std::uint32_t kMagic = 0x41554d42;  // "BMUA"
constexpr std::array<std::string_view, 5> kProblemNames = {"", "block_steps", "block_momentum",
                                                           "block_lr", "tensors"};

// The agreement block: magic, problem index (0: none), nesterov, then the 64-bit fields.
struct Terms {
  std::uint8_t problem = 0;
  std::uint8_t nesterov = 0;
  std::uint64_t block_steps = 0;
  std::uint64_t momentum_bits = 0;
  std::uint64_t lr_bits = 0;
  std::uint64_t tensors = 0;
  std::uint64_t elements = 0;
  std::uint64_t layout = 0;
};
constexpr std::size_t kBlockSize = 56;

void write(const Terms& t, std::span<std::byte> out) {
  std::memcpy(out.data(), &kMagic, 4);
  std::memcpy(out.data() + 4, &t.problem, 1);
  std::memcpy(out.data() + 5, &t.nesterov, 1);
  const std::uint64_t wide[] = {t.block_steps, t.momentum_bits, t.lr_bits,
                                t.tensors,     t.elements,      t.layout};
  std::memcpy(out.data() + 8, wide, sizeof wide);
}

Terms read(std::span<const std::byte> in) {
  Terms t;
  std::uint32_t magic = 0;
  std::memcpy(&magic, in.data(), 4);
  if (magic != kMagic) throw Error(ErrorCode::Internal, "Bmuf agreement: corrupt block");
  std::memcpy(&t.problem, in.data() + 4, 1);
  std::memcpy(&t.nesterov, in.data() + 5, 1);
  std::uint64_t wide[6];
  std::memcpy(wide, in.data() + 8, sizeof wide);
  t.block_steps = wide[0];
  t.momentum_bits = wide[1];
  t.lr_bits = wide[2];
  t.tensors = wide[3];
  t.elements = wide[4];
  t.layout = wide[5];
  return t;
}

std::uint64_t fnv1a(std::uint64_t h, const void* data, std::size_t size) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

std::uint64_t bmuf_layout_key(std::span<const BmufTensor> tensors) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const BmufTensor& t : tensors) {
    h = fnv1a(h, t.name.data(), t.name.size());
    const std::uint64_t count = t.data.size();
    h = fnv1a(h, &count, sizeof count);
  }
  return h;
}

BmufProblem bmuf_problem(const BmufOptions& o, std::span<const BmufTensor> tensors) {
  if (o.block_steps < 1) return {"block_steps", "must be >= 1 (local steps per block), got 0"};
  if (!(o.block_momentum >= 0 && o.block_momentum < 1)) {
    return {"block_momentum", "must be in [0, 1), got " + std::to_string(o.block_momentum)};
  }
  if (!(std::isfinite(o.block_lr) && o.block_lr > 0)) {
    return {"block_lr", "must be finite and > 0, got " + std::to_string(o.block_lr)};
  }
  if (tensors.empty()) return {"tensors", "no tensor registered"};
  std::set<std::string_view> names;
  for (const BmufTensor& t : tensors) {
    if (t.name.empty()) return {"tensors", "a tensor has an empty name"};
    if (!names.insert(t.name).second) return {"tensors", "'" + t.name + "' is registered twice"};
    if (t.data.empty()) return {"tensors", "'" + t.name + "' has no elements"};
  }
  return {};
}

void bmuf_agree(Communicator& comm, const BmufOptions& o, const BmufProblem& problem,
                std::uint64_t tensor_count, std::uint64_t element_count, std::uint64_t layout_key) {
  Terms mine;
  for (std::size_t i = 1; i < kProblemNames.size(); ++i) {
    if (problem.parameter == kProblemNames[i]) mine.problem = static_cast<std::uint8_t>(i);
  }
  if (!problem.parameter.empty() && mine.problem == 0) {
    throw Error(ErrorCode::Internal, "Bmuf: unknown parameter " + problem.parameter);
  }
  mine.nesterov = o.nesterov ? 1 : 0;
  mine.block_steps = o.block_steps;
  mine.momentum_bits = std::bit_cast<std::uint64_t>(o.block_momentum);
  mine.lr_bits = std::bit_cast<std::uint64_t>(o.block_lr);
  mine.tensors = tensor_count;
  mine.elements = element_count;
  mine.layout = layout_key;

  const auto p = static_cast<std::size_t>(comm.size());
  std::array<std::byte, kBlockSize> block{};
  write(mine, block);
  std::vector<std::byte> all(kBlockSize * p);
  allgather(comm, block, all, o.allreduce);  // its timeout
  std::vector<Terms> terms;
  for (std::size_t r = 0; r < p; ++r) {
    terms.push_back(read(std::span<const std::byte>(all).subspan(r * kBlockSize, kBlockSize)));
  }

  // Every rank holds the same blocks, so every rank throws the same kind of error.
  if (mine.problem != 0) require(false, problem.parameter, problem.why);
  for (std::size_t r = 0; r < p; ++r) {
    if (terms[r].problem != 0) {
      const std::string_view name = kProblemNames.at(terms[r].problem);
      require(false, name, "out of range on rank " + std::to_string(r));
    }
  }
  const auto field = [&](auto member, const char* name) {
    for (std::size_t r = 1; r < p; ++r) {
      if (terms[r].*member != terms[0].*member) {
        throw Error(ErrorCode::Mismatch, std::string("Bmuf: ranks disagree on ") + name +
                                             " (rank 0 and rank " + std::to_string(r) + ")");
      }
    }
  };
  field(&Terms::block_steps, "block_steps");
  field(&Terms::momentum_bits, "block_momentum");
  field(&Terms::lr_bits, "block_lr");
  field(&Terms::nesterov, "nesterov");
  field(&Terms::tensors, "the number of tensors");
  field(&Terms::elements, "the number of elements");
  field(&Terms::layout, "the tensors' names or sizes");
}

}  // namespace frugal::detail

#include "dense_agreement.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../patterns/recursive_doubling.hpp"
#include "reduce_kernels.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

namespace {

constexpr std::uint32_t kMagic = 0x41445246;  // "FRDA"
constexpr std::uint8_t kVersion = 1;
constexpr std::uint8_t kPoisoned = 1, kNonFinite = 2;

constexpr const char* kFieldNames[DenseAgreement::kFields] = {"element count", "dtype", "reduce op",
                                                              "algorithm", "non-finite action"};

// Sends `out` to `to` while receiving from `from` into `in`; returns whether a message of exactly
// in.size() bytes arrived. A longer message (truncation) or a shorter one is a disagreement, not
// an error: the caller must still finish the protocol so that its peers are not left waiting.
bool exchange(CollectiveContext& ctx, int to, std::span<const std::byte> out, int from,
              std::span<std::byte> in) {
  Request recv = from >= 0 ? ctx.irecv(from, in) : Request{};
  Request send = to >= 0 ? ctx.isend(to, out) : Request{};
  bool intact = true;
  if (from >= 0) {
    try {
      ctx.wait(recv);
      intact = recv.bytes() == in.size();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::Mismatch) throw;
      intact = false;
    }
  }
  if (to >= 0) ctx.wait(send);
  return intact;
}

}  // namespace

DenseAgreement::DenseAgreement(std::size_t count, DType dtype, ReduceOp op,
                               AllreduceAlgorithm algorithm, NonFiniteAction action,
                               bool non_finite) noexcept
    : non_finite_(non_finite) {
  min_ = {count, static_cast<std::uint64_t>(dtype), static_cast<std::uint64_t>(op),
          static_cast<std::uint64_t>(algorithm), static_cast<std::uint64_t>(action)};
  max_ = min_;
}

void DenseAgreement::write(std::span<std::byte> out) const noexcept {
  std::memset(out.data(), 0, kSize);
  std::memcpy(out.data(), &kMagic, 4);
  out[4] = std::byte{kVersion};
  out[5] = std::byte((poisoned_ ? kPoisoned : 0) | (non_finite_ ? kNonFinite : 0));
  std::memcpy(out.data() + 8, &min_[kCount], 8);
  std::memcpy(out.data() + 16, &max_[kCount], 8);
  for (std::size_t f = 1; f < kFields; ++f) {
    out[24 + 2 * (f - 1)] = std::byte(static_cast<std::uint8_t>(min_[f]));
    out[25 + 2 * (f - 1)] = std::byte(static_cast<std::uint8_t>(max_[f]));
  }
}

void DenseAgreement::merge(std::span<const std::byte> in, bool intact) noexcept {
  std::uint32_t magic = 0;
  if (intact && in.size() >= kSize) std::memcpy(&magic, in.data(), 4);
  if (magic != kMagic || in[4] != std::byte{kVersion}) {
    poisoned_ = true;
    return;
  }
  const auto flags = std::to_integer<std::uint8_t>(in[5]);
  poisoned_ |= (flags & kPoisoned) != 0;
  non_finite_ |= (flags & kNonFinite) != 0;
  std::uint64_t lo = 0, hi = 0;
  std::memcpy(&lo, in.data() + 8, 8);
  std::memcpy(&hi, in.data() + 16, 8);
  min_[kCount] = std::min(min_[kCount], lo);
  max_[kCount] = std::max(max_[kCount], hi);
  for (std::size_t f = 1; f < kFields; ++f) {
    min_[f] = std::min<std::uint64_t>(min_[f], std::to_integer<std::uint8_t>(in[24 + 2 * (f - 1)]));
    max_[f] = std::max<std::uint64_t>(max_[f], std::to_integer<std::uint8_t>(in[25 + 2 * (f - 1)]));
  }
}

void DenseAgreement::check(CollectiveContext& ctx) const {
  const std::string who = "rank " + std::to_string(ctx.rank()) + ": ranks disagree on the ";
  auto fail = [&](const std::string& text) {
    const Error error(ErrorCode::Mismatch, text);
    ctx.communicator().fail(error, /*every_rank_knows=*/true);
    throw error;
  };
  for (std::size_t f = 0; f < kFields; ++f) {
    if (min_[f] != max_[f]) {
      // Dense and compressed algorithms have distinct values, so a dense/compressed mix shows
      // here as an algorithm disagreement.
      const auto last_dense = static_cast<std::uint64_t>(AllreduceAlgorithm::Rabenseifner);
      const char* mix = f == kAlgorithm && min_[f] <= last_dense && max_[f] > last_dense
                            ? ": some ranks call a dense allreduce, others a compressed one"
                            : "";
      fail(who + kFieldNames[f] + " of this allreduce (from " + std::to_string(min_[f]) + " to " +
           std::to_string(max_[f]) + ")" + mix);
    }
  }
  if (poisoned_) {
    fail(who +
         "message sizes of this allreduce (element count or dtype, or dense against "
         "compressed), or are not all calling the same collective");
  }
}

void agree_recursive_doubling(CollectiveContext& ctx, DenseAgreement& agreement,
                              std::span<std::byte> data, DType dtype, int divisor) {
  constexpr std::size_t kHead = DenseAgreement::kSize;
  const std::size_t bytes = kHead + data.size();
  // Per-thread scratch: a fresh zeroed allocation per call showed up at 8-byte sizes.
  const std::span<std::byte> mine = scratch_bytes(ScratchSlot::Outgoing, bytes);
  const std::span<std::byte> theirs = scratch_bytes(ScratchSlot::Incoming, bytes);
  const std::span<std::byte> payload = mine.subspan(kHead);
  const std::span<const std::byte> their_payload = theirs.subspan(kHead);
  if (!data.empty()) std::memcpy(payload.data(), data.data(), data.size());

  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  if (fold.role == patterns::FoldRole::Extra) {
    agreement.write(mine);
    exchange(ctx, fold.partner, mine, -1, {});
  } else {
    if (fold.role == patterns::FoldRole::Proxy) {
      const bool intact = exchange(ctx, -1, {}, fold.partner, theirs);
      agreement.merge(theirs, intact);
      if (intact) reduce_sum(payload, their_payload, dtype);
    }
    for (int mask = 1; mask < fold.pof2; mask *= 2) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      agreement.write(mine);
      const bool intact = exchange(ctx, partner, mine, partner, theirs);
      agreement.merge(theirs, intact);
      // a + b == b + a in IEEE arithmetic, so both partners hold identical sums.
      if (intact) reduce_sum(payload, their_payload, dtype);
    }
    if (divisor > 1) divide(payload, dtype, divisor);
  }
  if (fold.role == patterns::FoldRole::Proxy) {
    agreement.write(mine);
    exchange(ctx, fold.partner, mine, -1, {});
  } else if (fold.role == patterns::FoldRole::Extra) {
    const bool intact = exchange(ctx, -1, {}, fold.partner, theirs);
    agreement.merge(theirs, intact);
    if (intact) std::memcpy(payload.data(), their_payload.data(), payload.size());
  }
  if (!data.empty()) std::memcpy(data.data(), payload.data(), data.size());
}

namespace {

template <typename T>
bool any_non_finite(std::span<const std::byte> data) noexcept {
  const std::size_t n = data.size() / sizeof(T);
  const auto* v = reinterpret_cast<const T*>(data.data());
  bool bad = false;
  // No early exit: a branch-free pass vectorises and costs the same for clean buffers.
  for (std::size_t i = 0; i < n; ++i) bad |= !std::isfinite(v[i]);
  return bad;
}

template <typename T>
std::size_t zero_non_finite_of(std::span<std::byte> data) noexcept {
  const std::size_t n = data.size() / sizeof(T);
  auto* v = reinterpret_cast<T*>(data.data());
  std::size_t zeroed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      v[i] = T{0};
      ++zeroed;
    }
  }
  return zeroed;
}

}  // namespace

bool has_non_finite(std::span<const std::byte> data, DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32:
      return any_non_finite<float>(data);
    case DType::Float64:
      return any_non_finite<double>(data);
    default:
      return false;
  }
}

std::size_t zero_non_finite(std::span<std::byte> data, DType dtype) noexcept {
  switch (dtype) {
    case DType::Float32:
      return zero_non_finite_of<float>(data);
    case DType::Float64:
      return zero_non_finite_of<double>(data);
    default:
      return 0;
  }
}

}  // namespace frugal::detail

#include "agreement.hpp"

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
// 3: an allreduce's param is its compression digest; kOutOfRange. (The 48-byte header that a
// compressed allreduce sent to every rank after version 2's block is gone.) 4: a compressed
// allreduce's payloads are cut at its segments (its digest travels in the compression digest),
// so a version-3 peer, which cuts them elsewhere, is turned away before any payload is sent.
// 5: kRefused, a rank that refused its own arguments, which stops every rank after the
// agreement; a version-4 peer would ignore the bit and wait for payloads that never come.
// 6: sparse recursive doubling moves its vector in ranges and the allgather of segmented
// payloads in batches, a message each; a version-5 peer sends and expects one message per step
// or peer, which would be truncated or decoded as the whole vector.
constexpr std::uint8_t kVersion = 6;
constexpr std::uint8_t kPoisoned = 1, kNonFinite = 2, kCountDiffers = 4, kParamDiffers = 8,
                       kOutOfRange = 16, kRefused = 32;
constexpr std::size_t kSmallAt = 24;

constexpr const char* kSmallNames[] = {"dtype", "reduce op", "algorithm", "non-finite action"};

std::uint64_t mix(std::uint64_t x) noexcept {  // splitmix64's finaliser: a bijection
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::uint64_t pair_hash(std::size_t from, std::size_t to, std::size_t count) noexcept {
  return mix(mix((static_cast<std::uint64_t>(from) << 32) ^ to) ^ count);
}

const char* count_name(CollectiveKind kind) noexcept {
  switch (kind) {
    case CollectiveKind::Allreduce:
    case CollectiveKind::ReduceScatter:
      return "element count";
    case CollectiveKind::Allgather:
      return "byte count of each rank's block";
    case CollectiveKind::Allgatherv:
      return "total byte count (the sum of counts)";
    case CollectiveKind::Broadcast:
      return "byte count";
    case CollectiveKind::Alltoall:
      return "byte count of each block";
    default:
      return "count";
  }
}

std::uint64_t load64(std::span<const std::byte> in, std::size_t at) noexcept {
  std::uint64_t v = 0;
  std::memcpy(&v, in.data() + at, 8);
  return v;
}

std::uint8_t load8(std::span<const std::byte> in, std::size_t at) noexcept {
  return std::to_integer<std::uint8_t>(in[at]);
}

// Whether `in` starts with a block of this version (whatever follows it).
bool readable(std::span<const std::byte> in) noexcept {
  if (in.size() < CollectiveAgreement::kSize) return false;
  std::uint32_t magic = 0;
  std::memcpy(&magic, in.data(), 4);
  return magic == kMagic && load8(in, 4) == kVersion;
}

bool valid(std::span<const std::byte> in, bool intact) noexcept {
  return intact && readable(in);
}

// What arrived in an exchange: `bytes` of the receive buffer hold the peer's message; `intact`
// when that is exactly the buffer's size.
struct Received {
  bool intact = true;
  std::size_t bytes = 0;
};

// Sends `out` to `to` while receiving from `from` into `in`. A longer message (truncation) or a
// shorter one is a disagreement, not an error: the caller must still finish the protocol so that
// its peers are not left waiting. A shorter one still starts with the peer's block (a rank that
// refused its arguments sends the block alone where its peers send [block | data]).
Received exchange(CollectiveContext& ctx, int to, std::span<const std::byte> out, int from,
                  std::span<std::byte> in) {
  Request recv = from >= 0 ? ctx.irecv(from, in) : Request{};
  Request send = to >= 0 ? ctx.isend(to, out) : Request{};
  Received got{true, in.size()};
  if (from >= 0) {
    try {
      ctx.wait(recv);
      got.bytes = std::min(recv.bytes(), in.size());
      got.intact = recv.bytes() == in.size();
    } catch (const Error& e) {
      if (e.code() != ErrorCode::Mismatch) throw;
      got = {false, 0};
    }
  }
  if (to >= 0) ctx.wait(send);
  return got;
}

}  // namespace

std::uint64_t compression_digest(const CompressionTerms& t) noexcept {
  if (t.method == 0) return 0;
  std::uint64_t h = mix(0x4652434f4d50ULL ^ t.method);  // never 0 in practice: 2^-64
  for (std::uint64_t v :
       {std::uint64_t{t.variant}, std::uint64_t{t.selection}, std::uint64_t{t.error_feedback},
        std::uint64_t{t.policy}, std::uint64_t{t.bits}, std::uint64_t{t.bucket}, t.k,
        t.tolerance_bits, t.seed}) {
    h = mix(h + 0x9e3779b97f4a7c15ULL + v);
  }
  // Only when set, so that every other configuration keeps its digest.
  if (t.clip_bits != 0) h = mix(h + 0x9e3779b97f4a7c15ULL + t.clip_bits);
  if (t.segments != 0) h = mix(h + 0x9e3779b97f4a7c15ULL + t.segments);
  if (t.topk_scope != 0) h = mix(h + 0x9e3779b97f4a7c15ULL + t.topk_scope);
  if (t.gtopk != 0) h = mix(h + 0x5a17ULL + t.gtopk);
  return h;
}

std::uint64_t counts_digest(std::span<const std::size_t> counts) noexcept {
  std::uint64_t h = mix(counts.size());
  for (std::size_t c : counts) h = mix(h + 0x9e3779b97f4a7c15ULL + c);
  return h;
}

std::uint64_t pair_digest(int rank, std::span<const std::size_t> send_counts,
                          std::span<const std::size_t> recv_counts) noexcept {
  const auto me = static_cast<std::size_t>(rank);
  std::uint64_t sum = 0;  // wraps: the check is modulo 2^64
  for (std::size_t q = 0; q < send_counts.size(); ++q) sum += pair_hash(me, q, send_counts[q]);
  for (std::size_t q = 0; q < recv_counts.size(); ++q) sum -= pair_hash(q, me, recv_counts[q]);
  return sum;
}

CollectiveAgreement::CollectiveAgreement(const AgreementTerms& terms, bool non_finite,
                                         bool out_of_range) noexcept
    : own_kind_(terms.kind),
      own_count_(terms.count),
      // The compressed reduce-scatter and allgather carry their compression terms like an
      // allreduce (their method is never 0: dense runs the plain collectives).
      own_param_(terms.kind == CollectiveKind::Allreduce || terms.compression.method != 0
                     ? compression_digest(terms.compression)
                     : terms.param),
      own_compression_(terms.compression),
      kind_min_(static_cast<std::uint8_t>(terms.kind)),
      kind_max_(kind_min_),
      count_(terms.count),
      param_(own_param_),
      non_finite_(non_finite),
      out_of_range_(out_of_range) {
  min_ = {static_cast<std::uint8_t>(terms.dtype), static_cast<std::uint8_t>(terms.op),
          static_cast<std::uint8_t>(terms.algorithm), static_cast<std::uint8_t>(terms.action)};
  max_ = min_;
}

void CollectiveAgreement::write(std::span<std::byte> out) const noexcept {
  std::memset(out.data(), 0, kSize);
  std::memcpy(out.data(), &kMagic, 4);
  out[4] = std::byte{kVersion};
  out[5] = std::byte((poisoned_ ? kPoisoned : 0) | (non_finite_ ? kNonFinite : 0) |
                     (count_differs_ ? kCountDiffers : 0) | (param_differs_ ? kParamDiffers : 0) |
                     (out_of_range_ ? kOutOfRange : 0) | (refused_ ? kRefused : 0));
  out[6] = std::byte{kind_min_};
  out[7] = std::byte{kind_max_};
  std::memcpy(out.data() + 8, &count_, 8);
  std::memcpy(out.data() + 16, &param_, 8);
  for (std::size_t f = 0; f < kSmall; ++f) {
    out[kSmallAt + 2 * f] = std::byte{min_[f]};
    out[kSmallAt + 2 * f + 1] = std::byte{max_[f]};
  }
}

void CollectiveAgreement::merge(std::span<const std::byte> in, bool intact) noexcept {
  // A refusal is read even from a block whose message had the wrong size, so that it reaches
  // every rank.
  if (readable(in) && (load8(in, 5) & kRefused) != 0) refused_ = true;
  if (!valid(in, intact)) {
    poisoned_ = true;
    return;
  }
  const std::uint8_t flags = load8(in, 5);
  poisoned_ |= (flags & kPoisoned) != 0;
  non_finite_ |= (flags & kNonFinite) != 0;
  out_of_range_ |= (flags & kOutOfRange) != 0;
  kind_min_ = std::min(kind_min_, load8(in, 6));
  kind_max_ = std::max(kind_max_, load8(in, 7));
  // The minimum and whether any two values met differ: enough to tell "all equal" everywhere.
  const std::uint64_t count = load64(in, 8);
  count_differs_ |= (flags & kCountDiffers) != 0 || count != count_;
  count_ = std::min(count_, count);
  const std::uint64_t param = load64(in, 16);
  if (own_kind_ == CollectiveKind::Alltoallv) {
    param_ += param;
  } else {
    param_differs_ |= (flags & kParamDiffers) != 0 || param != param_;
    param_ = std::min(param_, param);
  }
  for (std::size_t f = 0; f < kSmall; ++f) {
    min_[f] = std::min(min_[f], load8(in, kSmallAt + 2 * f));
    max_[f] = std::max(max_[f], load8(in, kSmallAt + 2 * f + 1));
  }
}

void CollectiveAgreement::adopt(std::span<const std::byte> in, bool intact) noexcept {
  // The proxy's block holds this rank's own refusal, if any, so it is OR-ed rather than taken.
  if (readable(in) && (load8(in, 5) & kRefused) != 0) refused_ = true;
  if (!valid(in, intact)) {
    poisoned_ = true;
    return;
  }
  const std::uint8_t flags = load8(in, 5);
  poisoned_ = (flags & kPoisoned) != 0;
  non_finite_ = (flags & kNonFinite) != 0;
  out_of_range_ = (flags & kOutOfRange) != 0;
  count_differs_ = (flags & kCountDiffers) != 0;
  param_differs_ = (flags & kParamDiffers) != 0;
  kind_min_ = load8(in, 6);
  kind_max_ = load8(in, 7);
  count_ = load64(in, 8);
  param_ = load64(in, 16);
  for (std::size_t f = 0; f < kSmall; ++f) {
    min_[f] = load8(in, kSmallAt + 2 * f);
    max_[f] = load8(in, kSmallAt + 2 * f + 1);
  }
}

std::optional<Error> CollectiveAgreement::verdict(int rank) const {
  // Messages are built on a disagreement only: this runs once per collective call.
  auto of = [&] { return " of this " + std::string(to_string(own_kind_)); };
  auto mismatch = [&](const std::string& text) {
    return std::optional<Error>(std::in_place, ErrorCode::Mismatch,
                                "rank " + std::to_string(rank) + ": " + text);
  };
  // check() names the refusing ranks and their reasons; this is what the block alone tells.
  if (refused_) {
    return mismatch(
        "some rank refused its arguments (InvalidArgument there, or a state bound elsewhere) "
        "and sent nothing else");
  }
  if (kind_min_ != kind_max_) {
    return mismatch("ranks are not all calling the same collective: " +
                    std::string(to_string(static_cast<CollectiveKind>(kind_min_))) + " and " +
                    std::string(to_string(static_cast<CollectiveKind>(kind_max_))) +
                    " among them (this rank calls " + std::string(to_string(own_kind_)) +
                    "); are collectives called in the same order on every rank?");
  }
  if (count_differs_) {
    return mismatch(std::string("ranks disagree on the ") + count_name(own_kind_) + of() +
                    " (this rank: " + std::to_string(own_count_) +
                    ", lowest: " + std::to_string(count_) + ")");
  }
  for (std::size_t f = 0; f < kSmall; ++f) {
    if (min_[f] == max_[f]) continue;
    // Dense and compressed algorithms have distinct values, so a dense/compressed mix shows
    // here as an algorithm disagreement.
    const auto last_dense = static_cast<std::uint8_t>(AllreduceAlgorithm::Rabenseifner);
    const char* mix_note = f == kAlgorithm && min_[f] <= last_dense && max_[f] > last_dense
                               ? ": some ranks call a dense allreduce, others a compressed one"
                               : "";
    return mismatch(std::string("ranks disagree on the ") + kSmallNames[f] + of() + " (from " +
                    std::to_string(min_[f]) + " to " + std::to_string(max_[f]) + ")" + mix_note);
  }
  // A poisoned block missed some ranks' alltoallv sums: only the fields above are sound.
  if (poisoned_) {
    return mismatch(
        "ranks are not all calling the same collective, or disagree on the size of its "
        "messages (an allreduce's element count or dtype, or dense against compressed), or "
        "some rank refused its arguments (InvalidArgument there)");
  }
  if (own_kind_ == CollectiveKind::Alltoallv && param_ != 0) {
    return mismatch(
        "ranks disagree on the block sizes of this alltoallv: some rank's send_counts[q] "
        "differs from rank q's recv_counts entry for it (a hash sum over all ranks does not "
        "cancel; it cannot tell which pair)");
  }
  if (param_differs_) {
    if (own_kind_ == CollectiveKind::Broadcast) {
      return mismatch("ranks disagree on the root of this broadcast (this rank: " +
                      std::to_string(own_param_) + ", lowest: " + std::to_string(param_) + ")");
    }
    if (own_kind_ == CollectiveKind::Allreduce || own_compression_.method != 0) {
      // The block holds a digest only: this rank's own terms let the logs of two ranks show
      // which one differs.
      const CompressionTerms& c = own_compression_;
      return mismatch(
          "ranks disagree on the compression method or one of its parameters" + of() +
          " (this rank: method " +
          std::string(compression::to_string(static_cast<compression::Method>(c.method))) + ", k " +
          std::to_string(c.k) + ", bits " + std::to_string(c.bits) + ", bucket size " +
          std::to_string(c.bucket) + ", variant " + std::to_string(c.variant) +
          ", top-k selection " + std::to_string(c.selection) + ", error feedback " +
          std::to_string(c.error_feedback) + ", non-finite policy " + std::to_string(c.policy) +
          ", seed " + std::to_string(c.seed) + (c.clip_bits != 0 ? ", ternary clip set" : "") +
          ", top-k scope " + std::to_string(c.topk_scope) + ", gtopk " + std::to_string(c.gtopk) +
          ", segments " +
          (c.segments != 0 ? "digest " + std::to_string(c.segments) : std::string("none")) + ")");
    }
    return mismatch("ranks disagree on the counts array" + of() +
                    " (every rank must pass the same counts)");
  }
  return std::nullopt;
}

void agree_recursive_doubling(CollectiveContext& ctx, CollectiveAgreement& agreement,
                              std::span<std::byte> data, DType dtype, int divisor) {
  constexpr std::size_t kHead = CollectiveAgreement::kSize;
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
      const Received got = exchange(ctx, -1, {}, fold.partner, theirs);
      agreement.merge(theirs.first(got.bytes), got.intact);
      if (got.intact) reduce_sum(payload, their_payload, dtype);
    }
    for (int mask = 1; mask < fold.pof2; mask *= 2) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      agreement.write(mine);
      const Received got = exchange(ctx, partner, mine, partner, theirs);
      agreement.merge(theirs.first(got.bytes), got.intact);
      // a + b == b + a in IEEE arithmetic, so both partners hold identical sums.
      if (got.intact) reduce_sum(payload, their_payload, dtype);
    }
    if (divisor > 1) divide(payload, dtype, divisor);
  }
  if (fold.role == patterns::FoldRole::Proxy) {
    agreement.write(mine);
    exchange(ctx, fold.partner, mine, -1, {});
  } else if (fold.role == patterns::FoldRole::Extra) {
    const Received got = exchange(ctx, -1, {}, fold.partner, theirs);
    agreement.adopt(theirs.first(got.bytes), got.intact);
    if (got.intact) std::memcpy(payload.data(), their_payload.data(), payload.size());
  }
  // A refusing rank's peers throw without having reduced anything (what refusals() tells them).
  if (!data.empty() && !agreement.refused()) {
    std::memcpy(data.data(), payload.data(), data.size());
  }
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

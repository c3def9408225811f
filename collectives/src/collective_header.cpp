#include "collective_header.hpp"

#include <cstring>
#include <string>

#include "frugal/error.hpp"

namespace frugal::detail {

namespace {

template <typename T>
void put(std::span<std::byte> out, std::size_t at, T value) noexcept {
  std::memcpy(out.data() + at, &value, sizeof value);
}

template <typename T>
T get(std::span<const std::byte> in, std::size_t at) noexcept {
  T value;
  std::memcpy(&value, in.data() + at, sizeof value);
  return value;
}

// Byte offsets of the fields.
constexpr std::size_t kMagicAt = 0, kVersionAt = 4, kAlgorithmAt = 5, kMethodAt = 6, kVariantAt = 7,
                      kSelectionAt = 8, kOpAt = 9, kDtypeAt = 10, kFeedbackAt = 11, kBitsAt = 12,
                      kBucketAt = 16, kActionAt = 20, kNonFiniteAt = 21, kCountAt = 24, kKAt = 32,
                      kSeedAt = 40;

}  // namespace

CollectiveHeader CollectiveHeader::describe(const AllreduceOptions& options,
                                            AllreduceAlgorithm algorithm, std::size_t count,
                                            std::size_t k) {
  using compression::Method;
  const compression::CompressionConfig& c = options.compression;
  CollectiveHeader h;
  h.algorithm = static_cast<std::uint8_t>(algorithm);
  h.method = static_cast<std::uint8_t>(c.method);
  switch (c.method) {
    case Method::TopK:
      h.variant = static_cast<std::uint8_t>(c.values);
      h.selection = static_cast<std::uint8_t>(c.selection);
      break;
    // Bucket 0 means the method's default: compare what is actually used.
    case Method::OneBit:
      h.variant = static_cast<std::uint8_t>(c.scaling);
      h.bucket = static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultOneBitChunk);
      break;
    case Method::Qsgd:
      h.variant = static_cast<std::uint8_t>(c.norm);
      h.bits = static_cast<std::uint32_t>(c.bits);
      h.bucket = static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultQsgdBucket);
      break;
    case Method::Ternary:
      h.bucket =
          static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultTernaryBucket);
      break;
    case Method::Bf16:
      h.variant = c.stochastic_rounding ? 1 : 0;
      break;
    case Method::None:
    case Method::Fp16:
      break;
  }
  h.op = static_cast<std::uint8_t>(options.op);
  h.dtype = static_cast<std::uint8_t>(DType::Float32);
  h.error_feedback = options.error_feedback ? 1 : 0;
  h.non_finite_action = static_cast<std::uint8_t>(options.non_finite);
  h.count = count;
  h.k = k;
  h.seed = options.seed;
  return h;
}

void CollectiveHeader::write(std::span<std::byte> out) const noexcept {
  std::memset(out.data(), 0, kSize);
  put(out, kMagicAt, kMagic);
  put(out, kVersionAt, kVersion);
  put(out, kAlgorithmAt, algorithm);
  put(out, kMethodAt, method);
  put(out, kVariantAt, variant);
  put(out, kSelectionAt, selection);
  put(out, kOpAt, op);
  put(out, kDtypeAt, dtype);
  put(out, kFeedbackAt, error_feedback);
  put(out, kActionAt, non_finite_action);
  put(out, kNonFiniteAt, non_finite);
  put(out, kBitsAt, bits);
  put(out, kBucketAt, bucket);
  put(out, kCountAt, count);
  put(out, kKAt, k);
  put(out, kSeedAt, seed);
}

std::uint8_t CollectiveHeader::check(std::span<const std::byte> received,
                                     const CollectiveHeader& expected, int self, int peer) {
  // Messages are built on failure only: this runs for every peer of every compressed call.
  auto who = [&] { return "rank " + std::to_string(self) + ": peer " + std::to_string(peer); };
  if (received.size() < kSize || get<std::uint32_t>(received, kMagicAt) != kMagic ||
      get<std::uint8_t>(received, kVersionAt) != kVersion) {
    throw Error(ErrorCode::Mismatch,
                who() + " sent something that is not a compressed-allreduce message (" +
                    std::to_string(received.size()) +
                    " bytes); are all ranks calling the same collective?");
  }
  auto field = [&](const char* name, std::uint64_t mine, std::uint64_t theirs) {
    if (mine != theirs) {
      throw Error(ErrorCode::Mismatch, who() + " disagrees on the " + name + " (" +
                                           std::to_string(mine) + " here, " +
                                           std::to_string(theirs) + " there)");
    }
  };
  field("element count", expected.count, get<std::uint64_t>(received, kCountAt));
  field("compression method", expected.method, get<std::uint8_t>(received, kMethodAt));
  field("algorithm", expected.algorithm, get<std::uint8_t>(received, kAlgorithmAt));
  field("method variant", expected.variant, get<std::uint8_t>(received, kVariantAt));
  field("top-k selection", expected.selection, get<std::uint8_t>(received, kSelectionAt));
  field("k", expected.k, get<std::uint64_t>(received, kKAt));
  field("bits", expected.bits, get<std::uint32_t>(received, kBitsAt));
  field("bucket size", expected.bucket, get<std::uint32_t>(received, kBucketAt));
  field("reduce op", expected.op, get<std::uint8_t>(received, kOpAt));
  field("dtype", expected.dtype, get<std::uint8_t>(received, kDtypeAt));
  field("error-feedback setting", expected.error_feedback,
        get<std::uint8_t>(received, kFeedbackAt));
  field("seed", expected.seed, get<std::uint64_t>(received, kSeedAt));
  field("non-finite action", expected.non_finite_action, get<std::uint8_t>(received, kActionAt));
  return get<std::uint8_t>(received, kNonFiniteAt);
}

}  // namespace frugal::detail

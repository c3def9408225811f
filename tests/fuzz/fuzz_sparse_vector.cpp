// libFuzzer target: the sparse allreduce's vector messages (SparseVector::deserialize), whose
// sparse form carries top-k's coded indices (delta varints or bitmaps per chunk), as a rank
// reads them from a peer. The first byte picks the receiver's element count. A message must be
// refused with Mismatch or read into a vector that holds up: serialized again it reads back,
// merges, scatters within its size and survives gTop-k's cut. Never an out-of-bounds access or
// undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "frugal/error.hpp"
#include "sparse_vector.hpp"

using namespace frugal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // Counts around the chunk size (65536) and the bitmap's byte padding.
  static constexpr std::size_t kSizes[] = {0, 1, 9, 100, 65536, 65537, 140000, 200};
  const std::size_t n = kSizes[data[0] % 8];
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  std::optional<detail::SparseVector> v;
  try {
    v.emplace(detail::SparseVector::deserialize(bytes, n));
  } catch (const Error& e) {
    if (e.code() != ErrorCode::Mismatch) __builtin_trap();
    return 0;
  }
  std::vector<std::byte> again(v->wire_bytes());
  if (again.size() > detail::SparseVector::max_wire_bytes(n)) __builtin_trap();
  v->serialize(again);
  const detail::SparseVector back = detail::SparseVector::deserialize(again, n);
  if (back.nonzeros() != v->nonzeros()) __builtin_trap();
  std::vector<float> out(n);
  v->merged(back).scatter_to(out);
  // gTop-k's cut on whatever values arrived (NaN included): at most k entries, in order.
  if (!v->dense()) {
    detail::SparseVector cut = *v;
    const std::size_t k = v->nonzeros() / 2 + 1;
    cut.keep_largest(k);
    if (cut.nonzeros() > k || cut.nonzeros() > v->nonzeros()) __builtin_trap();
    cut.scatter_to(out);
  }
  return 0;
}

#include "scratch_arena.hpp"

#include <array>
#include <memory>

namespace frugal::detail {

namespace {

constexpr std::align_val_t kAlignment{64};  // whole cache lines, any vector load

struct AlignedDelete {
  void operator()(std::byte* p) const noexcept { ::operator delete[](p, kAlignment); }
};

struct Buffer {
  std::unique_ptr<std::byte[], AlignedDelete> data;
  std::size_t size = 0;
};

thread_local std::array<Buffer, static_cast<std::size_t>(ScratchSlot::Count)> buffers;

}  // namespace

std::span<std::byte> scratch_bytes(ScratchSlot slot, std::size_t bytes) {
  Buffer& b = buffers[static_cast<std::size_t>(slot)];
  if (b.size < bytes) {
    const std::size_t size = (bytes + 63) / 64 * 64;
    b.data.reset();
    b.data.reset(static_cast<std::byte*>(::operator new[](size, kAlignment)));
    b.size = size;
  }
  return {b.data.get(), bytes};
}

}  // namespace frugal::detail

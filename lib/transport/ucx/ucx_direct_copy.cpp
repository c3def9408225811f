#include "ucx_direct_copy.hpp"

#include <sys/uio.h>

#include <cerrno>

namespace frugal::transport::ucx {

LiveSends::LiveSends(std::size_t capacity)
    : capacity_(capacity), slots_(std::make_unique<std::atomic<std::uint64_t>[]>(capacity)) {}

LiveSends::~LiveSends() {
  // A receiver still holding a descriptor must not find its token in memory reused later.
  for (std::size_t i = 0; i < capacity_; ++i) slots_[i].store(0, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

std::optional<std::uint64_t> LiveSends::open() noexcept {
  const std::uint64_t token = next_token_;
  if (slot(token).load(std::memory_order_relaxed) != 0) return std::nullopt;
  ++next_token_;
  slot(token).store(token, std::memory_order_relaxed);
  return token;
}

void LiveSends::retire(std::uint64_t token) noexcept {
  std::atomic<std::uint64_t>& s = slot(token);
  if (s.load(std::memory_order_relaxed) == token) s.store(0, std::memory_order_relaxed);
  // Before any later write of the caller into the buffer becomes visible, so a receiver that
  // copied such a write also sees the retired slot.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

std::uint64_t LiveSends::slot_address(std::uint64_t token) const noexcept {
  return reinterpret_cast<std::uint64_t>(&slot(token));
}

std::uint64_t LiveSends::probe_address() const noexcept {
  return reinterpret_cast<std::uint64_t>(&probe_word_);
}

int copy_from_process(int pid, std::uint64_t address, std::span<std::byte> into) noexcept {
  std::size_t done = 0;
  while (done < into.size()) {
    iovec local{into.data() + done, into.size() - done};
    iovec remote{reinterpret_cast<void*>(address + done), into.size() - done};
    const ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EFAULT;
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

}  // namespace frugal::transport::ucx

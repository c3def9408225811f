#pragma once

// Large messages between ranks of one host, copied once by the receiver straight out of the
// sender's memory (process_vm_readv, "CMA"), instead of by UCX.
//
// Why frugal does this itself: UCX 1.13's v2 protocols, which callback-mode endpoints need (see
// read_config in ucx_transport.cpp), never use CMA for rendezvous. Their RTS only carries a
// remote key for memory domains that need one (ucp_proto_rndv_rts_pack: md_map 0 sends no
// address), CMA's does not, so the receiver cannot pick get/zcopy and falls back to copying every
// message in 8 KiB fragments through the shared-memory FIFO: two copies, both sides busy.
//
// The protocol, per message of at least kDirectCopyMinBytes to a peer that can read us:
//  1. The sender opens a slot in its LiveSends table (its token), posts the receive of the
//     acknowledgement, and sends a DirectCopyDescriptor under the message's own tag (with
//     kDirectBit, which receives ignore), so UCX's ordered tag matching still decides which
//     receive gets it.
//  2. The receiver copies the data from the sender's address, then reads the slot back: only if
//     it still holds the token was the buffer valid during the whole copy (a sender that abandons
//     a send retires the slot before its caller may free or reuse the buffer). Then it acks.
//  3. The acknowledgement completes the send and retires the slot.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

namespace frugal::transport::ucx {

// Smaller messages are cheaper through UCX's eager shared-memory path than a system call and an
// acknowledgement.
inline constexpr std::size_t kDirectCopyMinBytes = 64 * 1024;

inline constexpr std::uint64_t kDirectCopyMagic = 0x6672756761'6c4443ULL;  // "frugalDC"

// What the sender sends instead of the data. Both ranks run on one host, so one byte order.
struct DirectCopyDescriptor {
  std::uint64_t magic = kDirectCopyMagic;
  std::uint64_t address = 0;       // the data in the sender's address space
  std::uint64_t length = 0;        // bytes
  std::uint64_t token = 0;         // the send's token, also in the acknowledgement's tag
  std::uint64_t slot_address = 0;  // where the sender keeps the token while the send is live
};

// The sender's table of sends that receivers may still copy from. Its memory stays put for the
// table's lifetime, since receivers read it from outside.
class LiveSends {
 public:
  explicit LiveSends(std::size_t capacity = 4096);
  ~LiveSends();
  LiveSends(const LiveSends&) = delete;
  LiveSends& operator=(const LiveSends&) = delete;

  // A fresh token with its slot marked live, or nullopt when its slot is still taken (that many
  // sends in flight: the caller sends through UCX instead).
  std::optional<std::uint64_t> open() noexcept;
  // Marks the send gone: a receiver that reads the slot afterwards refuses the data it copied.
  void retire(std::uint64_t token) noexcept;
  std::uint64_t slot_address(std::uint64_t token) const noexcept;
  // A word holding kDirectCopyMagic, read by peers at setup to find out whether they can read us.
  std::uint64_t probe_address() const noexcept;

 private:
  std::atomic<std::uint64_t>& slot(std::uint64_t token) const noexcept {
    return slots_[token % capacity_];
  }

  std::size_t capacity_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> slots_;
  std::uint64_t next_token_ = 1;
  std::uint64_t probe_word_ = kDirectCopyMagic;
};

// Copies into.size() bytes from `address` in process `pid` into `into`. Returns 0 or the errno
// of the failed read (ESRCH: the process is gone; EFAULT: the range is not mapped there; EPERM:
// not allowed, e.g. by Yama's ptrace_scope).
int copy_from_process(int pid, std::uint64_t address, std::span<std::byte> into) noexcept;

}  // namespace frugal::transport::ucx

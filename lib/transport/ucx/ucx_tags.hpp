#pragma once

// How frugal's (sender, tag) becomes UCP's 64-bit tag. A receive matches exactly one sender and
// one tag (every bit but kDirectBit), and UCP's ordered matching per sender endpoint gives the
// FIFO rule of frugal::Transport.
//
//   bit 63      internal: transport-private traffic, never a user tag
//   bit 62      direct copy: the message is a DirectCopyDescriptor standing for the data
//               (ucx_direct_copy.hpp); receives accept both forms, in send order
//   bits 61-32  sender rank (ranks < 2^30)
//   bits 31-0   frugal::Tag; internal messages: kind in bits 31-30 (0 the wire-up ping, 1 a
//               direct copy's acknowledgement) and the sender's token in bits 29-0

#include <ucp/api/ucp.h>

#include <cstdint>

#include "frugal/transport.hpp"

namespace frugal::transport::ucx {

inline constexpr ucp_tag_t kFullMask = ~ucp_tag_t{0};
inline constexpr ucp_tag_t kInternalBit = ucp_tag_t{1} << 63;
inline constexpr ucp_tag_t kDirectBit = ucp_tag_t{1} << 62;
inline constexpr ucp_tag_t kReceiveMask = kFullMask & ~kDirectBit;
inline constexpr Tag kMaxTag = UINT32_MAX;
inline constexpr int kMaxRanks = 1 << 30;

constexpr ucp_tag_t make_tag(int sender, Tag tag) noexcept {
  return (static_cast<ucp_tag_t>(static_cast<std::uint32_t>(sender)) << 32) | tag;
}

constexpr ucp_tag_t make_internal_tag(int sender, Tag tag) noexcept {
  return kInternalBit | make_tag(sender, tag);
}

// The acknowledgement that `receiver` copied the data of the send with `token`. Tokens only need
// to be unique among the sends in flight, which are far fewer than 2^30.
constexpr ucp_tag_t make_ack_tag(int receiver, std::uint64_t token) noexcept {
  constexpr std::uint32_t kAckKind = 1u << 30;
  return make_internal_tag(receiver,
                           kAckKind | static_cast<Tag>(token & ((std::uint64_t{1} << 30) - 1)));
}

}  // namespace frugal::transport::ucx

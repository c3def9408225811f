#pragma once

// How frugal's (sender, tag) becomes UCP's 64-bit tag. Receives use the full mask, so a receive
// matches exactly one sender and one tag, and UCP's ordered matching per sender endpoint gives
// the FIFO rule of frugal::Transport.
//
//   bit 63      internal: transport-private traffic (the wire-up ping), never a user tag
//   bits 62-32  sender rank (ranks < 2^31)
//   bits 31-0   frugal::Tag

#include <ucp/api/ucp.h>

#include <cstdint>

#include "frugal/transport.hpp"

namespace frugal::transport::ucx {

inline constexpr ucp_tag_t kFullMask = ~ucp_tag_t{0};
inline constexpr ucp_tag_t kInternalBit = ucp_tag_t{1} << 63;
inline constexpr Tag kMaxTag = UINT32_MAX;

constexpr ucp_tag_t make_tag(int sender, Tag tag) noexcept {
  return (static_cast<ucp_tag_t>(static_cast<std::uint32_t>(sender)) << 32) | tag;
}

constexpr ucp_tag_t make_internal_tag(int sender, Tag tag) noexcept {
  return kInternalBit | make_tag(sender, tag);
}

}  // namespace frugal::transport::ucx

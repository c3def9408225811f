#pragma once

// Wire format of the TCP rendezvous store, shared by server and client. Every frame is a 4-byte
// little-endian length followed by that many bytes; the first byte is the message type. Lengths
// are checked against the limit before anything is allocated.
//
//   hello  = 0x01 u32 version, i32 rank, i32 world_size, u16 token_length, token
//   set    = 0x02 u16 key_length, key, value (the rest of the frame)
//   get    = 0x03 u16 key_length, key
//   ok     = 0x81
//   value  = 0x82 value (the rest)
//   error  = 0x83 u8 frugal::ErrorCode, text (the rest)

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/error.hpp"

namespace frugal::bootstrap_wire {

inline constexpr std::uint32_t kVersion = 1;
inline constexpr std::size_t kHeaderBytes = 4;
inline constexpr std::size_t kMaxKeyBytes = 256;
inline constexpr std::size_t kMaxTokenBytes = 1024;

enum class Type : std::uint8_t {
  Hello = 0x01,
  Set = 0x02,
  Get = 0x03,
  Ok = 0x81,
  Value = 0x82,
  Error = 0x83,
};

// Appends fields to a frame; finish() fills in the length prefix.
class Writer {
 public:
  explicit Writer(Type type) : bytes_(kHeaderBytes, std::byte{0}) {
    u8(static_cast<std::uint8_t>(type));
  }

  Writer& u8(std::uint8_t v) {
    bytes_.push_back(std::byte{v});
    return *this;
  }
  Writer& u16(std::uint16_t v) { return little_endian(v, 2); }
  Writer& u32(std::uint32_t v) { return little_endian(v, 4); }
  Writer& i32(std::int32_t v) { return u32(static_cast<std::uint32_t>(v)); }
  Writer& raw(std::span<const std::byte> data) {
    bytes_.insert(bytes_.end(), data.begin(), data.end());
    return *this;
  }
  Writer& raw(std::string_view text) { return raw(std::as_bytes(std::span(text))); }
  // u16 length then the bytes; the caller has checked the length.
  Writer& short_string(std::string_view text) {
    u16(static_cast<std::uint16_t>(text.size()));
    return raw(text);
  }

  std::size_t body_size() const noexcept { return bytes_.size() - kHeaderBytes; }

  // Fills in the length prefix and hands the frame over (the writer is empty afterwards).
  std::vector<std::byte> finish() {
    const auto n = static_cast<std::uint32_t>(body_size());
    for (std::size_t i = 0; i < kHeaderBytes; ++i) bytes_[i] = std::byte((n >> (8 * i)) & 0xff);
    return std::move(bytes_);
  }

 private:
  Writer& little_endian(std::uint32_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) bytes_.push_back(std::byte((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::vector<std::byte> bytes_;
};

inline std::uint32_t decode_length(std::span<const std::byte, kHeaderBytes> header) noexcept {
  std::uint32_t n = 0;
  for (std::size_t i = 0; i < kHeaderBytes; ++i)
    n |= std::to_integer<std::uint32_t>(header[i]) << (8 * i);
  return n;
}

// Reads fields of a received frame body; every read is bounds-checked and a short frame is an
// InvalidArgument ("malformed <what>").
class Reader {
 public:
  Reader(std::span<const std::byte> body, std::string_view what) : body_(body), what_(what) {}

  std::uint8_t u8() { return std::to_integer<std::uint8_t>(take(1)[0]); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(little_endian(2)); }
  std::uint32_t u32() { return little_endian(4); }
  std::int32_t i32() { return static_cast<std::int32_t>(u32()); }
  std::span<const std::byte> take(std::size_t n) {
    if (n > body_.size() - offset_) {
      throw Error(ErrorCode::InvalidArgument, "bootstrap store: malformed " + std::string(what_) +
                                                  " (frame of " + std::to_string(body_.size()) +
                                                  " bytes is too short)");
    }
    const auto out = body_.subspan(offset_, n);
    offset_ += n;
    return out;
  }
  std::string short_string(std::size_t limit, std::string_view field) {
    const std::size_t n = u16();
    if (n > limit) {
      throw Error(ErrorCode::InvalidArgument,
                  "bootstrap store: " + std::string(field) + " of " + std::to_string(n) +
                      " bytes exceeds the limit of " + std::to_string(limit));
    }
    const auto bytes = take(n);
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  std::span<const std::byte> rest() { return take(body_.size() - offset_); }

 private:
  std::uint32_t little_endian(int bytes) {
    const auto b = take(static_cast<std::size_t>(bytes));
    std::uint32_t v = 0;
    for (int i = 0; i < bytes; ++i)
      v |= std::to_integer<std::uint32_t>(b[static_cast<std::size_t>(i)]) << (8 * i);
    return v;
  }
  std::span<const std::byte> body_;
  std::string_view what_;
  std::size_t offset_ = 0;
};

// A client's frame body, parsed and bounds-checked (what the store's server acts on). Before the
// handshake only a hello is accepted; after it, set and get. Throws InvalidArgument naming what
// is wrong. `value` points into the body.
struct ClientMessage {
  Type type = Type::Hello;
  std::uint32_t version = 0;
  std::int32_t rank = -1;
  std::int32_t world_size = 0;
  std::string token;
  std::string key;
  std::span<const std::byte> value;
};

inline ClientMessage parse_client_message(std::span<const std::byte> body, bool handshaken) {
  Reader in(body, "message");
  ClientMessage m;
  m.type = static_cast<Type>(in.u8());
  if (!handshaken) {
    if (m.type != Type::Hello) {
      throw Error(ErrorCode::InvalidArgument, "expected a hello as the first message");
    }
    m.version = in.u32();
    m.rank = in.i32();
    m.world_size = in.i32();
    m.token = in.short_string(kMaxTokenBytes, "token");
  } else if (m.type == Type::Set) {
    m.key = in.short_string(kMaxKeyBytes, "key");
    m.value = in.rest();
  } else if (m.type == Type::Get) {
    m.key = in.short_string(kMaxKeyBytes, "key");
  } else {
    throw Error(ErrorCode::InvalidArgument,
                "unknown message type " + std::to_string(static_cast<int>(m.type)));
  }
  return m;
}

// Compares in time that depends only on the expected token's length, so that the token cannot
// be guessed byte by byte from response times.
inline bool same_token(std::string_view expected, std::string_view given) noexcept {
  unsigned char diff = expected.size() == given.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const char g = i < given.size() ? given[i] : '\0';
    diff |= static_cast<unsigned char>(expected[i] ^ g);
  }
  return diff == 0;
}

}  // namespace frugal::bootstrap_wire

// libFuzzer target: the TCP bootstrap store's message parsing
// (lib/bootstrap/tcp_store_protocol.hpp), as the server parses client frames before and after the
// handshake, plus the length prefix.
// Malformed input must end in frugal::Error, never an out-of-bounds read or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <span>

#include "tcp_store_protocol.hpp"

using namespace frugal::bootstrap_wire;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  if (size >= kHeaderBytes) {
    const std::uint32_t length =
        decode_length(std::span<const std::byte, kHeaderBytes>(bytes.first<kHeaderBytes>()));
    // The server refuses frames longer than what it allocates for; here the frame is what follows.
    if (length != size - kHeaderBytes) return 0;
    for (bool handshaken : {false, true}) {
      try {
        const ClientMessage m = parse_client_message(bytes.subspan(kHeaderBytes), handshaken);
        // What the server goes on to use must lie inside the frame.
        if (!m.value.empty() && (m.value.data() < bytes.data() ||
                                 m.value.data() + m.value.size() > bytes.data() + size)) {
          __builtin_trap();
        }
        if (m.key.size() > kMaxKeyBytes || m.token.size() > kMaxTokenBytes) __builtin_trap();
      } catch (const frugal::Error&) {
      }
    }
  }
  return 0;
}

// Status codes, the thread-local last error message and the version.

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "capi_internal.hpp"

namespace frugal::capi {
namespace {

// A fixed buffer rather than a std::string: recording an error must not itself be able to
// throw (e.g. bad_alloc while reporting bad_alloc).
constexpr std::size_t kMessageCapacity = 1024;
thread_local char last_message[kMessageCapacity] = "";

}  // namespace

void clear_error() noexcept {
  last_message[0] = '\0';
}

frugal_status set_error(frugal_status status, std::string_view function,
                        std::string_view message) noexcept {
  std::snprintf(last_message, kMessageCapacity, "%.*s: %.*s", static_cast<int>(function.size()),
                function.data(), static_cast<int>(message.size()), message.data());
  return status;
}

frugal_status to_status(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument:
      return FRUGAL_ERR_INVALID_ARGUMENT;
    case ErrorCode::Mismatch:
      return FRUGAL_ERR_MISMATCH;
    case ErrorCode::Timeout:
      return FRUGAL_ERR_TIMEOUT;
    case ErrorCode::PeerFailure:
      return FRUGAL_ERR_PEER_FAILURE;
    case ErrorCode::Transport:
      return FRUGAL_ERR_TRANSPORT;
    case ErrorCode::Internal:
      return FRUGAL_ERR_INTERNAL;
  }
  return FRUGAL_ERR_INTERNAL;
}

frugal_status status_of_current_exception(std::string_view function) noexcept {
  try {
    throw;
  } catch (const Error& error) {
    return set_error(to_status(error.code()), function, error.what());
  } catch (const std::bad_alloc&) {
    return set_error(FRUGAL_ERR_NO_MEMORY, function, "out of memory");
  } catch (const std::exception& error) {
    return set_error(FRUGAL_ERR_INTERNAL, function, error.what());
  } catch (...) {
    return set_error(FRUGAL_ERR_INTERNAL, function, "unknown exception");
  }
}

void copy_image(const std::vector<std::byte>& image, void* buf, size_t capacity, size_t* written) {
  require_pointer(written, "written");
  if (capacity < image.size()) {
    *written = image.size();
    throw Error(ErrorCode::InvalidArgument, "capacity " + std::to_string(capacity) +
                                                " is smaller than the state image (" +
                                                std::to_string(image.size()) + " bytes)");
  }
  if (!image.empty()) {
    require_pointer(buf, "buf");
    std::memcpy(buf, image.data(), image.size());
  }
  *written = image.size();
}

}  // namespace frugal::capi

extern "C" {

const char* frugal_status_string(frugal_status status) {
  switch (status) {
    case FRUGAL_OK:
      return "FRUGAL_OK";
    case FRUGAL_ERR_INVALID_ARGUMENT:
      return "FRUGAL_ERR_INVALID_ARGUMENT";
    case FRUGAL_ERR_MISMATCH:
      return "FRUGAL_ERR_MISMATCH";
    case FRUGAL_ERR_TIMEOUT:
      return "FRUGAL_ERR_TIMEOUT";
    case FRUGAL_ERR_PEER_FAILURE:
      return "FRUGAL_ERR_PEER_FAILURE";
    case FRUGAL_ERR_TRANSPORT:
      return "FRUGAL_ERR_TRANSPORT";
    case FRUGAL_ERR_INTERNAL:
      return "FRUGAL_ERR_INTERNAL";
    case FRUGAL_ERR_UNSUPPORTED:
      return "FRUGAL_ERR_UNSUPPORTED";
    case FRUGAL_ERR_NO_MEMORY:
      return "FRUGAL_ERR_NO_MEMORY";
  }
  return "unknown status";
}

const char* frugal_last_error_message(void) {
  return frugal::capi::last_message;
}

uint32_t frugal_version(void) {
  return FRUGAL_VERSION;
}

const char* frugal_version_string(void) {
  return FRUGAL_VERSION_STRING;
}

}  // extern "C"

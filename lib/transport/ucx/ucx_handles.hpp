#pragma once

// Owning wrappers for the UCP handles whose release needs nothing but the handle. Endpoints and
// requests need the worker to make progress while they close, so UcxTransport manages those.

#include <ucp/api/ucp.h>

#include <cstddef>
#include <memory>
#include <span>

namespace frugal::transport::ucx {

struct ConfigRelease {
  void operator()(ucp_config_t* config) const noexcept { ucp_config_release(config); }
};
using Config = std::unique_ptr<ucp_config_t, ConfigRelease>;

struct ContextCleanup {
  void operator()(ucp_context* context) const noexcept { ucp_cleanup(context); }
};
using Context = std::unique_ptr<ucp_context, ContextCleanup>;

struct WorkerDestroy {
  void operator()(ucp_worker* worker) const noexcept { ucp_worker_destroy(worker); }
};
using Worker = std::unique_ptr<ucp_worker, WorkerDestroy>;

// The worker's packed address, released back to the worker.
class WorkerAddress {
 public:
  WorkerAddress(ucp_worker_h worker, ucp_address_t* address, std::size_t length) noexcept
      : worker_(worker), address_(address), length_(length) {}
  ~WorkerAddress() {
    if (address_ != nullptr) ucp_worker_release_address(worker_, address_);
  }
  WorkerAddress(const WorkerAddress&) = delete;
  WorkerAddress& operator=(const WorkerAddress&) = delete;

  std::span<const std::byte> bytes() const noexcept {
    return {reinterpret_cast<const std::byte*>(address_), length_};
  }

 private:
  ucp_worker_h worker_;
  ucp_address_t* address_;
  std::size_t length_;
};

}  // namespace frugal::transport::ucx

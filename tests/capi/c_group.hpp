#pragma once

// Loopback ranks through the C API, for the in-process C API tests.

#include <gtest/gtest.h>

#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

#include "frugal/frugal.h"

namespace frugal::capi_test {

// One communicator per rank from frugal_comm_create_loopback, released at the end.
class CGroup {
 public:
  explicit CGroup(int size) : comms_(static_cast<std::size_t>(size), nullptr) {
    EXPECT_EQ(frugal_comm_create_loopback(size, comms_.data()), FRUGAL_OK)
        << frugal_last_error_message();
  }
  ~CGroup() {
    for (frugal_comm* c : comms_) frugal_comm_destroy(c);
  }
  CGroup(const CGroup&) = delete;
  CGroup& operator=(const CGroup&) = delete;

  frugal_comm* operator[](int rank) { return comms_[static_cast<std::size_t>(rank)]; }
  int size() const { return static_cast<int>(comms_.size()); }

  // Runs body(rank, comm) on one thread per rank.
  void run(const std::function<void(int, frugal_comm*)>& body) {
    std::vector<std::thread> threads;
    for (int r = 0; r < size(); ++r) threads.emplace_back([&, r] { body(r, (*this)[r]); });
    for (auto& t : threads) t.join();
  }

 private:
  std::vector<frugal_comm*> comms_;
};

}  // namespace frugal::capi_test

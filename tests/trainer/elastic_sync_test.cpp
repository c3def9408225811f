// Elastic resume of GradientSync in process (loopback ranks as threads): the 1-bit error
// feedback that 4 ranks saved (two-phase: worker and server residuals) restored on 2 ranks
// (allgather: the server residuals fold into the workers') and on 3 (two-phase again) carries
// the same update, summed over ranks, as before; a PowerSGD sync refuses to redistribute.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"
#include "gradient_sync.hpp"

namespace frugal::train {
namespace {

// Runs body(rank, comm) on `ranks` loopback ranks, one thread each; rethrows the first error.
void on_ranks(int ranks, const std::function<void(int, Communicator&)>& body) {
  LoopbackGroup group = make_loopback_group(ranks);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        Communicator comm(std::move(group.transports[static_cast<std::size_t>(r)]));
        body(r, comm);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> parameters() {
  return {{"w0", torch::zeros({16, 24}).requires_grad_()},
          {"w1", torch::zeros({8, 16}).requires_grad_()},
          {"b", torch::zeros({8}).requires_grad_()}};
}

// One backward whose gradient differs by rank and step.
void backward(const std::vector<std::pair<std::string, torch::Tensor>>& params, int rank,
              int step) {
  torch::Tensor loss = torch::zeros({});
  for (std::size_t i = 0; i < params.size(); ++i) {
    const torch::Tensor& p = params[i].second;
    const torch::Tensor data =
        torch::sin(torch::arange(p.numel(), torch::kFloat32) * 0.37 * (rank + 1) +
                   static_cast<double>(step) + static_cast<double>(i))
            .reshape(p.sizes());
    loss = loss + (p * data).sum();
  }
  loss.backward();
}

SyncOptions onebit() {
  SyncOptions o;
  o.compression.method = compression::Method::OneBit;
  o.bucket_bytes = 1024;  // several buckets
  return o;
}

TEST(ElasticSync, RedistributedErrorFeedbackCarriesTheSameUpdate) {
  torch::set_num_threads(1);
  constexpr int kOld = 4;
  std::vector<std::vector<std::byte>> images(kOld);
  std::vector<double> carried(kOld);
  on_ranks(kOld, [&](int rank, Communicator& comm) {
    const auto params = parameters();
    GradientSync sync(comm, params, onebit(), 3);
    for (int step = 0; step < 3; ++step) {
      sync.begin_step(true);
      backward(params, rank, step);
      ASSERT_TRUE(sync.end_step());
    }
    images[static_cast<std::size_t>(rank)] = sync.save_state();
    carried[static_cast<std::size_t>(rank)] = sync.carried_update();
  });
  double before = 0;
  for (const double c : carried) before += c;
  ASSERT_GT(std::abs(before), 1e-3) << "nothing carried: the test would prove nothing";
  for (const int now : {2, 3}) {
    SCOPED_TRACE(now);
    std::vector<double> after_by_rank(static_cast<std::size_t>(now));
    on_ranks(now, [&](int rank, Communicator& comm) {
      const auto params = parameters();
      GradientSync sync(comm, params, onebit(), 3);
      sync.restore_redistributed(images);
      after_by_rank[static_cast<std::size_t>(rank)] = sync.carried_update();
      // The restored state runs: the next step stands on every rank.
      sync.begin_step(true);
      backward(params, rank, 3);
      EXPECT_TRUE(sync.end_step());
    });
    double after = 0;
    for (const double c : after_by_rank) after += c;
    EXPECT_NEAR(after, before, 1e-5 * std::abs(before));
    // Not merely kept by one rank: shrinking to 2, both new ranks inherit residuals.
    if (now == 2) {
      EXPECT_NE(after_by_rank[0], 0);
      EXPECT_NE(after_by_rank[1], 0);
    }
  }
  // Restoring an image of 4 ranks as is on 2 is refused, which is why redistribution exists.
  EXPECT_THROW(on_ranks(2,
                        [&](int rank, Communicator& comm) {
                          const auto params = parameters();
                          GradientSync sync(comm, params, onebit(), 3);
                          sync.restore_state(images[static_cast<std::size_t>(rank)]);
                          sync.begin_step(true);
                          backward(params, rank, 3);
                          sync.end_step();
                        }),
               Error);
}

TEST(ElasticSync, PowerSgdRefusesToRedistribute) {
  on_ranks(1, [&](int, Communicator& comm) {
    const auto params = parameters();
    SyncOptions o;
    o.powersgd = true;
    GradientSync sync(comm, params, o, 3);
    try {
      sync.restore_redistributed({std::vector<std::byte>(8), std::vector<std::byte>(8)});
      ADD_FAILURE() << "a PowerSGD state was redistributed";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("--resume"), std::string::npos) << e.what();
    }
  });
}

}  // namespace
}  // namespace frugal::train

// allreduce_async on the progress engine, and GradientBuckets: fusion, overlap with backward,
// equivalence with per-tensor allreduces, error propagation and state checkpoints.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/collectives/buckets.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using namespace std::chrono_literals;
using testing::run_ranks;

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 5000ms) {
  const auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return condition();
}

TEST(AllreduceAsync, QueuedAllreducesRunInOrderAndMatchBlockingOnes) {
  run_ranks(3, [](Communicator& comm) {
    std::vector<std::vector<float>> buffers;
    for (int i = 0; i < 4; ++i) buffers.push_back(testing::integer_input(comm.rank(), i, 1000 + i));
    std::vector<std::vector<float>> expected = buffers;
    std::vector<AllreduceHandle> handles;
    for (auto& b : buffers) handles.push_back(allreduce_async(comm, std::span<float>(b)));
    // A blocking collective while these are pending is refused, not interleaved.
    std::vector<float> other(10, 1.0f);
    if (!handles.back().test()) {
      EXPECT_THROW(allreduce(comm, std::span<float>(other)), Error);
    }
    for (auto& h : handles) {
      h.wait();
      EXPECT_TRUE(h.test());
      EXPECT_EQ(h.state(), AllreduceHandle::State::Done);
    }
    EXPECT_FALSE(comm.failed());
    for (auto& e : expected) allreduce(comm, std::span<float>(e));
    EXPECT_EQ(buffers, expected);
  });
}

TEST(AllreduceAsync, ErrorsAreRethrownByWaitOnTheCallingThread) {
  run_ranks(
      2,
      [](Communicator& comm) {
        std::vector<float> x(100, 1.0f);
        AllreduceOptions o;
        o.compression.method = compression::Method::Qsgd;
        o.compression.bits = 3;  // invalid
        o.error_feedback = false;
        AllreduceHandle h = allreduce_async(comm, std::span<float>(x), o);
        try {
          h.wait();
          FAIL() << "no error";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
          EXPECT_NE(std::string(e.what()).find("bits"), std::string::npos) << e.what();
        }
        // A mismatch inside the engine: every rank's wait() reports it.
        std::vector<float> y(comm.rank() == 0 ? 5000 : 5001, 1.0f);
        o.compression.bits = 4;
        AllreduceHandle m = allreduce_async(comm, std::span<float>(y), o);
        try {
          m.wait();
          FAIL() << "no mismatch";
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
        }
      },
      5000ms, false);
}

struct Model {
  std::vector<std::string> names;
  std::vector<std::size_t> sizes;
};

Model model() {
  return {{"fc.bias", "fc.weight", "conv3.weight", "bn2.bias", "conv2.weight", "conv1.weight"},
          {10, 5120, 9216, 64, 4608, 432}};
}

std::vector<std::vector<float>> gradients(int rank, int step) {
  const Model m = model();
  std::vector<std::vector<float>> g;
  for (std::size_t i = 0; i < m.sizes.size(); ++i) {
    g.push_back(
        testing::integer_input(rank, static_cast<std::uint64_t>(step * 10 + i), m.sizes[i]));
  }
  return g;
}

class Buckets : public ::testing::TestWithParam<compression::Method> {};

TEST_P(Buckets, ResultsEqualAllreducingEachTensorSeparately) {
  // Dense sums and fp16 casts are element-wise, so fusion must not change a single bit.
  const Model m = model();
  run_ranks(3, [&](Communicator& comm) {
    BucketOptions options;
    options.bucket_bytes = 16 * 1024;  // several buckets
    options.allreduce.compression.method = GetParam();
    options.allreduce.error_feedback = false;
    GradientBuckets buckets(comm, options);
    for (std::size_t i = 0; i < m.names.size(); ++i) buckets.add(m.names[i], m.sizes[i]);
    for (int step = 0; step < 2; ++step) {
      std::vector<std::vector<float>> fused = gradients(comm.rank(), step);
      std::vector<std::vector<float>> separate = fused;
      for (std::size_t i = 0; i < fused.size(); ++i) buckets.mark_ready(i, fused[i]);
      buckets.finish();
      for (auto& t : separate) allreduce(comm, std::span<float>(t), options.allreduce);
      EXPECT_EQ(fused, separate) << "step " << step;
    }
    EXPECT_GE(buckets.bucket_count(), 3U);
  });
}

INSTANTIATE_TEST_SUITE_P(ElementWise, Buckets,
                         ::testing::Values(compression::Method::None, compression::Method::Fp16));

// Two buckets with identical contents must not get identical stochastic roundings: with one
// stream for all buckets of a step, element i of every bucket would round the same way and the
// rounding errors of a model's layers would add up instead of averaging out. Both the ranks'
// encodes (allgather, P = 2) and the owners' re-encodes (two-phase, P = 3) are checked, and a
// second run with the same seed reproduces the first bit for bit.
class BucketStreams : public ::testing::TestWithParam<std::tuple<compression::Method, int>> {};

TEST_P(BucketStreams, IdenticalBucketsRoundIndependentlyAndReproducibly) {
  const auto [method, p] = GetParam();
  constexpr std::size_t n = 4096;
  std::mutex mutex;
  std::vector<std::vector<float>> first, second;
  for (int run = 0; run < 2; ++run) {
    run_ranks(p, [&](Communicator& comm) {
      BucketOptions options;
      options.bucket_bytes = n * sizeof(float);  // one tensor per bucket
      options.allreduce.compression.method = method;
      options.allreduce.compression.stochastic_rounding = true;  // bf16
      options.allreduce.error_feedback = false;
      options.allreduce.seed = 7;
      GradientBuckets buckets(comm, options);
      buckets.add("layer1.weight", n);
      buckets.add("layer2.weight", n);
      std::vector<float> a = testing::case_input(comm.rank(), 0, n), b = a;
      buckets.mark_ready(0, a);
      buckets.mark_ready(1, b);
      buckets.finish();
      ASSERT_EQ(buckets.bucket_count(), 2U);
      EXPECT_NE(a, b) << "both buckets drew the same random numbers";
      if (comm.rank() == 0) {
        std::lock_guard lock(mutex);
        (run == 0 ? first : second) = {a, b};
      }
    });
  }
  EXPECT_EQ(first, second);
}

// e.g. ternary_P3
INSTANTIATE_TEST_SUITE_P(
    Stochastic, BucketStreams,
    ::testing::Combine(::testing::Values(compression::Method::Ternary, compression::Method::Qsgd,
                                         compression::Method::Bf16),
                       ::testing::Values(2, 3)),
    [](const ::testing::TestParamInfo<std::tuple<compression::Method, int>>& info) {
      return std::string(compression::to_string(std::get<0>(info.param))) + "_P" +
             std::to_string(std::get<1>(info.param));
    });

// Error feedback in the LR's units: a residual is gradient mass that the next step applies at
// its own learning rate. Scaling the residuals by lr_prev / lr_now before each step keeps the
// update every step's gradient stands for: sum_t lr_t * applied_t + lr_T * residual_T equals
// sum_t lr_t * g_t (up to rounding), through a warmup and a step decay. One rank, so that the
// reduced result is what this rank's encode applied.
class BucketsFollowLr : public ::testing::TestWithParam<compression::Method> {};

TEST_P(BucketsFollowLr, ScaledResidualsKeepTheUpdateOfEveryGradient) {
  const std::vector<float> lrs = {0.1f, 0.2f, 0.4f, 0.8f, 0.8f, 0.08f, 0.08f};
  const Model m = model();
  run_ranks(1, [&](Communicator& comm) {
    BucketOptions options;
    options.bucket_bytes = 16 * 1024;
    options.allreduce.compression.method = GetParam();
    options.allreduce.compression.density = 0.05;
    GradientBuckets buckets(comm, options);
    std::vector<std::vector<float>> wanted, got;
    for (std::size_t i = 0; i < m.names.size(); ++i) {
      buckets.add(m.names[i], m.sizes[i]);
      wanted.emplace_back(m.sizes[i], 0.0f);
      got.emplace_back(m.sizes[i], 0.0f);
    }
    for (std::size_t t = 0; t < lrs.size(); ++t) {
      if (t > 0) buckets.scale_residuals(lrs[t - 1] / lrs[t]);
      std::vector<std::vector<float>> g = gradients(0, static_cast<int>(t));
      for (std::size_t i = 0; i < g.size(); ++i) {
        for (std::size_t j = 0; j < g[i].size(); ++j) wanted[i][j] += lrs[t] * g[i][j];
      }
      for (std::size_t i = 0; i < g.size(); ++i) buckets.mark_ready(i, g[i]);
      buckets.finish();
      for (std::size_t i = 0; i < g.size(); ++i) {
        for (std::size_t j = 0; j < g[i].size(); ++j) got[i][j] += lrs[t] * g[i][j];
      }
    }
    // Tensors sit in their bucket in registration order.
    std::vector<std::size_t> at(buckets.bucket_count(), 0);
    float worst = 0.0f, scale = 0.0f;
    for (std::size_t i = 0; i < m.names.size(); ++i) {
      const std::size_t b = buckets.bucket_of(i);
      const std::span<const float> residual = buckets.allreduce_state(b).worker_residual();
      ASSERT_GE(residual.size(), at[b] + m.sizes[i]);
      for (std::size_t j = 0; j < m.sizes[i]; ++j) {
        const float carried = got[i][j] + lrs.back() * residual[at[b] + j];
        worst = std::max(worst, std::abs(carried - wanted[i][j]));
        scale = std::max(scale, std::abs(wanted[i][j]));
      }
      at[b] += m.sizes[i];
    }
    EXPECT_LE(worst, 1e-5f * scale) << "largest |sum lr*g| " << scale;
    // Only between steps, and only for a usable factor.
    std::vector<std::vector<float>> g = gradients(0, 99);  // finish() writes into them
    buckets.mark_ready(0, g[0]);
    EXPECT_THROW(buckets.scale_residuals(0.5f), Error);
    for (std::size_t i = 1; i < g.size(); ++i) buckets.mark_ready(i, g[i]);
    buckets.finish();
    try {
      buckets.scale_residuals(std::nanf(""));
      ADD_FAILURE() << "NaN factor accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("factor"), std::string::npos) << e.what();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Biased, BucketsFollowLr,
                         ::testing::Values(compression::Method::OneBit, compression::Method::TopK),
                         [](const ::testing::TestParamInfo<compression::Method>& info) {
                           return std::string(compression::to_string(info.param));
                         });

// Both residuals of a state, worker and two-phase server, scale exactly.
TEST(AllreduceStateScale, WorkerAndServerResidualsScale) {
  run_ranks(3, [](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::OneBit;
    o.algorithm = AllreduceAlgorithm::TwoPhase;
    o.state = &state;
    std::vector<float> x = testing::case_input(comm.rank(), 0, 3000);
    allreduce(comm, std::span<float>(x), o);
    const std::vector<float> worker(state.worker_residual().begin(), state.worker_residual().end());
    const std::vector<float> server(state.server_residual().begin(), state.server_residual().end());
    ASSERT_FALSE(server.empty());
    state.scale_residuals(0.25f);
    for (std::size_t i = 0; i < worker.size(); ++i) {
      EXPECT_EQ(state.worker_residual()[i], 0.25f * worker[i]);
    }
    for (std::size_t i = 0; i < server.size(); ++i) {
      EXPECT_EQ(state.server_residual()[i], 0.25f * server[i]);
    }
    EXPECT_THROW(state.scale_residuals(-1.0f), Error);
    EXPECT_THROW(state.scale_residuals(INFINITY), Error);
  });
}

// 1-D tensors dense by default: with a compression method, tensors registered with dims <= 1
// (biases, BN γ/β) are fused into a dense bucket of their own and reduced exactly, while the
// matrices are compressed. The dense bucket takes its place in the launch order when it closes
// (here: last, after the compressed buckets that filled before it). A tensor added without dims
// is compressed; BucketOptions::dense_vectors = false compresses everything.
TEST(BucketsDenseVectors, VectorsAreReducedExactlyInADenseBucket) {
  const Model m = model();
  const std::vector<std::size_t> dims = {1, 2, 4, 1, 4, 4};  // fc.bias, fc.weight, ..., bn2.bias
  for (const bool dense_vectors : {true, false}) {
    SCOPED_TRACE(dense_vectors ? "dense vectors" : "everything compressed");
    run_ranks(3, [&](Communicator& comm) {
      BucketOptions options;
      options.bucket_bytes = 16 * 1024;
      options.dense_vectors = dense_vectors;
      options.allreduce.compression.method = compression::Method::OneBit;
      GradientBuckets buckets(comm, options);
      for (std::size_t i = 0; i < m.names.size(); ++i) buckets.add(m.names[i], m.sizes[i], dims[i]);
      buckets.add("legacy.bias", 16);  // no dims: compressed
      std::vector<std::vector<float>> g = gradients(comm.rank(), 0);
      g.push_back(testing::integer_input(comm.rank(), 50, 16));
      std::vector<std::vector<float>> exact(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) {
        exact[i] = g[i];
        allreduce(comm, std::span<float>(exact[i]));
      }
      for (std::size_t i = 0; i < g.size(); ++i) buckets.mark_ready(i, g[i]);
      buckets.finish();
      for (std::size_t i = 0; i < g.size(); ++i) {
        const bool vector = dense_vectors && i < dims.size() && dims[i] <= 1;
        EXPECT_EQ(buckets.bucket_is_dense(buckets.bucket_of(i)), vector) << m.names[i % 6];
        if (vector) {
          EXPECT_EQ(g[i], exact[i]) << "tensor " << i;
        } else {
          EXPECT_NE(g[i], exact[i]) << "tensor " << i << " was not compressed";
        }
      }
      if (dense_vectors) {
        // fc.bias and bn2.bias share one dense bucket, launched after the compressed ones.
        EXPECT_EQ(buckets.bucket_of(0), buckets.bucket_of(3));
        EXPECT_EQ(buckets.bucket_of(0), buckets.bucket_count() - 2);
        for (std::size_t b = 0; b + 2 < buckets.bucket_count(); ++b) {
          EXPECT_FALSE(buckets.bucket_is_dense(b)) << "bucket " << b;
        }
      }
    });
  }
}

TEST(BucketsOverlap, FirstBucketStartsBeforeTheLastTensorIsReady) {
  const Model m = model();
  run_ranks(2, [&](Communicator& comm) {
    BucketOptions options;
    options.bucket_bytes = 24 * 1024;
    options.allreduce.compression.method = compression::Method::OneBit;
    GradientBuckets buckets(comm, options);
    for (std::size_t i = 0; i < m.names.size(); ++i) buckets.add(m.names[i], m.sizes[i]);
    std::vector<std::vector<float>> g = gradients(comm.rank(), 0);
    // Backward produces the first bucket's tensors...
    buckets.mark_ready(0, g[0]);
    ASSERT_EQ(buckets.bucket_of(1), 0U);
    ASSERT_NE(buckets.bucket_of(m.names.size() - 1), 0U);
    EXPECT_EQ(buckets.bucket_state(0), AllreduceHandle::State::Queued);
    buckets.mark_ready(1, g[1]);
    // ...and its allreduce is under way while the rest of backward has not produced anything.
    EXPECT_TRUE(
        eventually([&] { return buckets.bucket_state(0) != AllreduceHandle::State::Queued; }));
    EXPECT_EQ(buckets.bucket_state(buckets.bucket_count() - 1), AllreduceHandle::State::Queued);
    // Out-of-order readiness: later buckets only start after earlier ones.
    for (std::size_t i = g.size(); i-- > 2;) buckets.mark_ready(m.names[i], g[i]);
    buckets.finish();
  });
}

TEST(BucketsErrors, MisuseIsInvalidArgument) {
  run_ranks(1, [](Communicator& comm) {
    GradientBuckets buckets(comm);
    const std::size_t a = buckets.add("a", 4);
    buckets.add("b", 4);
    EXPECT_THROW(buckets.add("a", 3), Error);
    EXPECT_THROW(buckets.add("c", 0), Error);
    std::vector<float> ga(4, 1.0f), gb(5, 1.0f);
    EXPECT_THROW(buckets.mark_ready("b", gb), Error);  // wrong size
    buckets.mark_ready(a, ga);
    EXPECT_THROW(buckets.mark_ready(a, ga), Error);  // twice
    EXPECT_THROW(buckets.add("d", 1), Error);        // layout is fixed
    try {
      buckets.finish();
      FAIL() << "finish with a tensor missing";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    }
    // The next step works.
    gb.resize(4);
    buckets.mark_ready(a, ga);
    buckets.mark_ready("b", gb);
    buckets.finish();
  });
}

TEST(BucketsState, SavedAndRestoredPerBucketByLayout) {
  const Model m = model();
  std::mutex mutex;
  std::vector<std::vector<std::vector<float>>> third(2), replayed(2);
  run_ranks(2, [&](Communicator& comm) {
    BucketOptions options;
    options.bucket_bytes = 24 * 1024;
    options.allreduce.compression.method = compression::Method::OneBit;
    auto make = [&] {
      auto b = std::make_unique<GradientBuckets>(comm, options);
      for (std::size_t i = 0; i < m.names.size(); ++i) b->add(m.names[i], m.sizes[i]);
      return b;
    };
    auto run_step = [&](GradientBuckets& b, int step) {
      std::vector<std::vector<float>> g = gradients(comm.rank(), step);
      for (std::size_t i = 0; i < g.size(); ++i) b.mark_ready(i, g[i]);
      b.finish();
      return g;
    };
    auto original = make();
    run_step(*original, 0);
    run_step(*original, 1);
    const std::vector<std::byte> image = original->save_state();
    auto after = run_step(*original, 2);
    auto resumed = make();
    resumed->restore_state(image);
    auto again = run_step(*resumed, 2);
    {
      std::lock_guard lock(mutex);
      third[static_cast<std::size_t>(comm.rank())] = after;
      replayed[static_cast<std::size_t>(comm.rank())] = again;
    }
    // A different model has no state in this image.
    GradientBuckets other(comm, options);
    other.add("only", 100);
    try {
      other.restore_state(image);
      ADD_FAILURE() << "restored into another layout";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch);
    }
    // Bytes after the last record: refused, and the buckets keep the state they had.
    std::vector<std::byte> padded = image;
    padded.push_back(std::byte{0});
    const std::vector<std::byte> kept = resumed->save_state();
    try {
      resumed->restore_state(padded);
      ADD_FAILURE() << "restored an image with a trailing byte";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      const std::string what = e.what();
      EXPECT_NE(what.find("GradientBuckets state image"), std::string::npos) << what;
      EXPECT_NE(what.find("1 trailing bytes"), std::string::npos) << what;
      EXPECT_NE(what.find(std::to_string(padded.size()) + " bytes"), std::string::npos) << what;
    }
    EXPECT_EQ(resumed->save_state(), kept);
    const std::vector<std::vector<std::byte>> both = {image, padded};
    try {
      GradientBuckets::redistribute_state(both, 1, options);
      ADD_FAILURE() << "redistributed an image with a trailing byte";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    }
  });
  EXPECT_EQ(third, replayed);
}

}  // namespace
}  // namespace frugal

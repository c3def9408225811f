// Issue 8 in real processes (mpirun; FRUGAL_TEST_TRANSPORT=ucx for UCX): ranks that disagree on
// a dense allreduce, call dense against compressed, call different collectives or pass any
// collective different parameters all get Mismatch, and the NaN/Inf actions decide alike on
// every rank. Each test takes a communicator of its own, since a mismatch fails it.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "collective_calls.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

// Runs `body` and returns the code it threw, or nullopt.
template <typename Body>
std::optional<ErrorCode> code_of(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.code();
  }
  return std::nullopt;
}

// Every rank's outcome, gathered over MPI so that each rank checks all of them.
std::vector<int> gather(std::optional<ErrorCode> code) {
  int mine = code ? static_cast<int>(*code) : -1;
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<int> all(static_cast<std::size_t>(size));
  MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD);
  return all;
}

TEST(MpiAgreement, CountDtypeAndOrderMismatchesAreMismatchOnEveryRank) {
  for (std::size_t n : {std::size_t{2}, std::size_t{4000}, std::size_t{300000}}) {
    auto comm = testing::make_test_communicator();
    const bool last = comm->rank() == comm->size() - 1;
    auto code = code_of([&] {
      std::vector<float> data(last ? n + 1 : n, 1.0f);
      allreduce(*comm, std::span<float>(data));
    });
    for (int c : gather(code))
      EXPECT_EQ(c, static_cast<int>(ErrorCode::Mismatch)) << "count n=" << n;
  }
  {
    auto comm = testing::make_test_communicator();
    auto code = code_of([&] {
      if (comm->rank() == 0) {
        std::vector<std::int32_t> data(16, 1);
        allreduce(*comm, std::span<std::int32_t>(data));
      } else {
        std::vector<float> data(16, 1.0f);
        allreduce(*comm, std::span<float>(data));
      }
    });
    for (int c : gather(code)) EXPECT_EQ(c, static_cast<int>(ErrorCode::Mismatch)) << "dtype";
  }
  {
    auto comm = testing::make_test_communicator();
    auto code = code_of([&] {
      std::vector<float> a(10, 1.0f), b(200000, 1.0f);
      if (comm->rank() == 1) std::swap(a, b);
      allreduce(*comm, std::span<float>(a));
      allreduce(*comm, std::span<float>(b));
    });
    // A rank that finds the disagreement first must not announce it as a failure: a peer still
    // waiting for a slow partner's last agreement message would throw PeerFailure instead.
    for (int c : gather(code)) EXPECT_EQ(c, static_cast<int>(ErrorCode::Mismatch)) << "order";
  }
}

TEST(MpiAgreement, DenseAgainstCompressedIsMismatchOnEveryRank) {
  // One rank (first or last) calls the other kind; every dense algorithm against a two-phase
  // and a sparse top-k method, small and large.
  for (AllreduceAlgorithm dense : {AllreduceAlgorithm::RecursiveDoubling, AllreduceAlgorithm::Ring,
                                   AllreduceAlgorithm::Rabenseifner}) {
    for (compression::Method method : {compression::Method::OneBit, compression::Method::TopK}) {
      for (bool odd_is_dense : {false, true}) {
        for (std::size_t n : {std::size_t{16}, std::size_t{4000}, std::size_t{100000}}) {
          auto comm = testing::make_test_communicator();
          const int odd = odd_is_dense ? comm->size() - 1 : 0;
          AllreduceOptions o;
          o.algorithm = dense;
          if ((comm->rank() == odd) != odd_is_dense) {
            o = AllreduceOptions{};
            o.error_feedback = false;
            o.compression.method = method;
            o.compression.density = 0.05;
          }
          auto code = code_of([&] {
            std::vector<float> data(n, 1.0f);
            allreduce(*comm, std::span<float>(data), o);
          });
          for (int c : gather(code)) {
            EXPECT_EQ(c, static_cast<int>(ErrorCode::Mismatch))
                << to_string(dense) << " vs " << compression::to_string(method) << " n=" << n
                << (odd_is_dense ? " dense odd" : " compressed odd");
          }
        }
      }
    }
  }
}

// The code and message each rank threw, gathered so that rank 0's report names every rank's.
std::string summary(const std::vector<int>& codes) {
  std::ostringstream out;
  for (std::size_t r = 0; r < codes.size(); ++r) out << " rank " << r << ": " << codes[r];
  return out.str();
}

TEST(MpiAgreement, DifferentCollectivesAreMismatchOnEveryRank) {
  // Each collective against the next one in the list, the odd rank last (a folded extra rank at
  // np 3) one way round and first the other; and barrier against allgather explicitly.
  const std::vector<testing::Call> calls = testing::every_collective();
  std::vector<std::pair<std::size_t, std::size_t>> pairs;
  for (std::size_t a = 0; a < calls.size(); ++a) {
    pairs.emplace_back(a, (a + 1) % calls.size());
    pairs.emplace_back((a + 1) % calls.size(), a);
  }
  pairs.emplace_back(calls.size() - 1, 3);  // barrier (odd, first) vs allgather
  for (auto [a, b] : pairs) {
    auto comm = testing::make_test_communicator();
    const int odd = a < b ? comm->size() - 1 : 0;
    const auto code = code_of([&] { (comm->rank() == odd ? calls[b] : calls[a]).run(*comm); });
    const std::vector<int> all = gather(code);
    for (int c : all) {
      EXPECT_EQ(c, static_cast<int>(ErrorCode::Mismatch))
          << calls[a].name << " vs " << calls[b].name << ":" << summary(all);
    }
  }
}

TEST(MpiAgreement, ParameterMismatchesAreMismatchOnEveryRank) {
  for (const testing::ParameterCase& c : testing::parameter_cases()) {
    for (bool last : {false, true}) {
      auto comm = testing::make_test_communicator();
      const bool odd = comm->rank() == (last ? comm->size() - 1 : 0);
      std::string message;
      const auto code = code_of([&] {
        try {
          c.run(*comm, odd);
        } catch (const Error& e) {
          message = e.what();
          throw;
        }
      });
      const std::vector<int> all = gather(code);
      for (int r : all) {
        EXPECT_EQ(r, static_cast<int>(ErrorCode::Mismatch))
            << c.what << (last ? " last" : " first") << ":" << summary(all);
      }
      EXPECT_NE(message.find(c.needle), std::string::npos) << c.what << ": " << message;
    }
  }
}

TEST(MpiAgreement, NonFiniteErrorAndSkipDecideAlikeOnEveryRank) {
  for (compression::Method method :
       {compression::Method::None, compression::Method::OneBit, compression::Method::TopK}) {
    auto comm = testing::make_test_communicator();
    for (NonFiniteAction action : {NonFiniteAction::Error, NonFiniteAction::Skip}) {
      AllreduceState state;
      AllreduceStats stats;
      AllreduceOptions o;
      o.compression.method = method;
      o.state = &state;
      o.stats = &stats;
      o.non_finite = action;
      std::vector<float> data(5000, 1.0f);
      if (comm->rank() == 1) data[4321] = std::numeric_limits<float>::quiet_NaN();
      const std::vector<float> input = data;
      const auto code = code_of([&] { allreduce(*comm, std::span<float>(data), o); });
      const int expect =
          action == NonFiniteAction::Error ? static_cast<int>(ErrorCode::InvalidArgument) : -1;
      for (int c : gather(code)) EXPECT_EQ(c, expect) << to_string(action);
      if (action == NonFiniteAction::Skip) {
        EXPECT_TRUE(stats.non_finite_skipped);
      }
      EXPECT_EQ(std::memcmp(data.data(), input.data(), data.size() * 4), 0);
      EXPECT_TRUE(state.worker_residual().empty() ||
                  std::all_of(state.worker_residual().begin(), state.worker_residual().end(),
                              [](float r) { return std::isfinite(r); }));
      EXPECT_FALSE(comm->failed());
    }
  }
}

TEST(MpiAgreement, OutOfRangeInputAndSumAreInvalidArgumentOnEveryRank) {
  auto comm = testing::make_test_communicator();
  // One rank's fp16 input above 65504, under Error, Default (policy Error) and Zero.
  for (NonFiniteAction action :
       {NonFiniteAction::Error, NonFiniteAction::Default, NonFiniteAction::Zero}) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    o.state = &state;
    o.non_finite = action;
    std::vector<float> data(5000, 1.0f);
    if (comm->rank() == comm->size() - 1) data[4321] = 70000.0f;
    const std::vector<float> input = data;
    const auto code = code_of([&] { allreduce(*comm, std::span<float>(data), o); });
    for (int c : gather(code)) {
      EXPECT_EQ(c, static_cast<int>(ErrorCode::InvalidArgument)) << to_string(action);
    }
    EXPECT_EQ(std::memcmp(data.data(), input.data(), data.size() * 4), 0);
    EXPECT_EQ(state.steps(), 0u);
  }
  // Every input fits; the sum of 40000 over the ranks does not, so two-phase's owner cannot
  // re-encode it (the allgather, Auto's choice at P = 2, never re-encodes).
  for (bool feedback : {false, true}) {
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::Fp16;
    o.algorithm = AllreduceAlgorithm::TwoPhase;
    o.error_feedback = feedback;
    o.state = feedback ? &state : nullptr;
    std::vector<float> data(5000, 1.0f);
    data[2500] = 40000.0f;
    const auto code = code_of([&] { allreduce(*comm, std::span<float>(data), o); });
    for (int c : gather(code)) {
      EXPECT_EQ(c, static_cast<int>(ErrorCode::InvalidArgument)) << "sum feedback=" << feedback;
    }
  }
  // The communicator is still usable.
  std::vector<float> data(5000, 1.0f);
  AllreduceOptions o;
  o.compression.method = compression::Method::Fp16;
  o.error_feedback = false;
  allreduce(*comm, std::span<float>(data), o);
  EXPECT_EQ(data[0], static_cast<float>(comm->size()));
  EXPECT_FALSE(comm->failed());
}

}  // namespace
}  // namespace frugal

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "chunking.hpp"
#include "frugal/collectives/collectives.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

using testing::run_ranks;

std::byte pattern(int rank, std::size_t i) {
  return static_cast<std::byte>((i * 31 + static_cast<std::size_t>(rank) * 7 + 3) & 0xff);
}

class DenseCollectives : public ::testing::TestWithParam<int> {};

TEST_P(DenseCollectives, ReduceScatterLeavesEachRankItsReducedChunk) {
  const int p = GetParam();
  for (std::size_t count :
       {std::size_t{0}, std::size_t{1}, static_cast<std::size_t>(p) + 1, std::size_t{100'003}}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average}) {
      run_ranks(p, [&](Communicator& comm) {
        std::vector<float> data(count);
        for (std::size_t i = 0; i < count; ++i) {
          data[i] = static_cast<float>((i + static_cast<std::size_t>(comm.rank()) * 5) % 17);
        }
        CollectiveOptions options;
        options.segment_bytes = 4000;
        const std::span<float> mine = reduce_scatter(comm, std::span<float>(data), op, options);
        const patterns::Range range = patterns::chunk_range(count, p, comm.rank());
        ASSERT_EQ(mine.size(), range.count);
        ASSERT_EQ(mine.data(), data.data() + range.offset);
        for (std::size_t k = 0; k < range.count; ++k) {
          const std::size_t i = range.offset + k;
          float expected = 0;
          for (int r = 0; r < p; ++r) {
            expected += static_cast<float>((i + static_cast<std::size_t>(r) * 5) % 17);
          }
          if (op == ReduceOp::Average) expected /= static_cast<float>(p);
          ASSERT_EQ(mine[k], expected) << "element " << i << " on rank " << comm.rank();
        }
      });
    }
  }
}

TEST_P(DenseCollectives, AllgatherAndAllgathervCollectInRankOrder) {
  const int p = GetParam();
  for (std::size_t per_rank : {std::size_t{0}, std::size_t{1}, std::size_t{10'007}}) {
    run_ranks(p, [&](Communicator& comm) {
      std::vector<std::byte> mine(per_rank);
      for (std::size_t i = 0; i < per_rank; ++i) mine[i] = pattern(comm.rank(), i);
      std::vector<std::byte> out(per_rank * static_cast<std::size_t>(p));
      CollectiveOptions options;
      options.segment_bytes = 1000;
      allgather(comm, mine, out, options);
      for (int r = 0; r < p; ++r) {
        for (std::size_t i = 0; i < per_rank; ++i) {
          ASSERT_EQ(out[static_cast<std::size_t>(r) * per_rank + i], pattern(r, i));
        }
      }
    });
  }
  // Uneven sizes, one of them empty.
  std::vector<std::size_t> sizes(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) sizes[static_cast<std::size_t>(r)] = r == 1 ? 0 : 333 * r + 5;
  run_ranks(p, [&](Communicator& comm) {
    std::vector<std::byte> mine(sizes[static_cast<std::size_t>(comm.rank())]);
    for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = pattern(comm.rank(), i);
    std::vector<std::byte> out(std::accumulate(sizes.begin(), sizes.end(), std::size_t{0}));
    allgatherv(comm, mine, out, sizes);
    std::size_t at = 0;
    for (int r = 0; r < p; ++r) {
      for (std::size_t i = 0; i < sizes[static_cast<std::size_t>(r)]; ++i) {
        ASSERT_EQ(out[at++], pattern(r, i)) << "from rank " << r;
      }
    }
  });
}

TEST_P(DenseCollectives, BroadcastFromEveryRoot) {
  const int p = GetParam();
  for (int root = 0; root < p; ++root) {
    run_ranks(p, [&](Communicator& comm) {
      std::vector<std::byte> data(50'001, std::byte{0});
      if (comm.rank() == root) {
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = pattern(root, i);
      }
      CollectiveOptions options;
      options.segment_bytes = 4096;
      broadcast(comm, data, root, options);
      for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], pattern(root, i));
    });
  }
}

TEST_P(DenseCollectives, AlltoallvDeliversEachBlockToItsRank) {
  const int p = GetParam();
  // Rank i sends (i + 2j) % 5 * 100 + 1 bytes to rank j; byte k of that block encodes (i, j, k).
  auto block_size = [](int from, int to) {
    return static_cast<std::size_t>((from + 2 * to) % 5 * 100 + 1);
  };
  auto value = [](int from, int to, std::size_t k) {
    return static_cast<std::byte>((from * 16 + to * 3 + k) & 0xff);
  };
  run_ranks(p, [&](Communicator& comm) {
    const int me = comm.rank();
    std::vector<std::size_t> send_counts, recv_counts;
    std::vector<std::byte> send;
    for (int j = 0; j < p; ++j) {
      send_counts.push_back(block_size(me, j));
      recv_counts.push_back(block_size(j, me));
      for (std::size_t k = 0; k < block_size(me, j); ++k) send.push_back(value(me, j, k));
    }
    std::vector<std::byte> recv(std::accumulate(recv_counts.begin(), recv_counts.end(), 0UL));
    alltoallv(comm, send, send_counts, recv, recv_counts);
    std::size_t at = 0;
    for (int j = 0; j < p; ++j) {
      for (std::size_t k = 0; k < block_size(j, me); ++k) ASSERT_EQ(recv[at++], value(j, me, k));
    }
    // Equal blocks.
    std::vector<std::byte> equal(static_cast<std::size_t>(p) * 3), got(equal.size());
    for (std::size_t i = 0; i < equal.size(); ++i) equal[i] = value(me, static_cast<int>(i / 3), i);
    alltoall(comm, equal, got);
    for (std::size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i],
                value(static_cast<int>(i / 3), me, static_cast<std::size_t>(me) * 3 + i % 3));
    }
  });
}

TEST_P(DenseCollectives, BarrierReleasesNobodyBeforeTheLastArrives) {
  const int p = GetParam();
  std::atomic<int> arrived{0};
  run_ranks(p, [&](Communicator& comm) {
    if (comm.rank() == p - 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    arrived.fetch_add(1);
    barrier(comm);
    EXPECT_EQ(arrived.load(), p);
  });
}

INSTANTIATE_TEST_SUITE_P(Loopback, DenseCollectives, ::testing::Values(1, 2, 3, 4, 5, 8),
                         [](const auto& info) {
                           // Not "P" + to_string(): GCC 12 warns falsely there (-Wrestrict).
                           std::string name = "P";
                           name += std::to_string(info.param);
                           return name;
                         });

TEST(DenseCollectivesErrors, BadArgumentsNameTheParameter) {
  run_ranks(2, [](Communicator& comm) {
    std::vector<std::byte> mine(4), out(7);
    auto expect_invalid = [](auto&& call, const std::string& name) {
      try {
        call();
        ADD_FAILURE() << "accepted bad " << name;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      }
    };
    expect_invalid([&] { allgather(comm, mine, out); }, "out");
    expect_invalid([&] { broadcast(comm, mine, 2); }, "root");
    expect_invalid([&] { alltoall(comm, mine, out); }, "recv");
    std::vector<std::byte> odd(5), odd_out(5);
    expect_invalid([&] { alltoall(comm, odd, odd_out); }, "send");
    const std::vector<std::size_t> one{4};
    expect_invalid([&] { allgatherv(comm, mine, out, one); }, "counts");
    EXPECT_FALSE(comm.failed());
  });
}

}  // namespace
}  // namespace frugal

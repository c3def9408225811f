#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "chunking.hpp"
#include "exchange.hpp"
#include "recursive_doubling.hpp"
#include "ring.hpp"

namespace frugal::patterns {
namespace {

TEST(ChunkRange, CoversEverythingBalancedLargerFirst) {
  for (std::size_t total : {0UL, 1UL, 2UL, 7UL, 8UL, 9UL, 1000003UL}) {
    for (int parts : {1, 2, 3, 4, 5, 8}) {
      std::size_t next = 0;
      std::size_t largest = 0;
      std::size_t smallest = total;
      std::size_t previous = total + 1;
      for (int i = 0; i < parts; ++i) {
        const Range r = chunk_range(total, parts, i);
        EXPECT_EQ(r.offset, next) << total << " " << parts << " " << i;
        EXPECT_LE(r.count, previous);
        previous = r.count;
        next = r.end();
        largest = std::max(largest, r.count);
        smallest = std::min(smallest, r.count);
      }
      EXPECT_EQ(next, total);
      EXPECT_LE(largest - smallest, 1U);
    }
  }
}

TEST(ChunkRange, HandMadeExample) {
  EXPECT_EQ(chunk_range(10, 4, 0), (Range{0, 3}));
  EXPECT_EQ(chunk_range(10, 4, 1), (Range{3, 3}));
  EXPECT_EQ(chunk_range(10, 4, 2), (Range{6, 2}));
  EXPECT_EQ(chunk_range(10, 4, 3), (Range{8, 2}));
  EXPECT_EQ(chunk_span(10, 4, 1, 3), (Range{3, 5}));
}

TEST(Segments, CoverRangeWithLastShort) {
  const Range r{100, 10};
  EXPECT_EQ(segment_count(10, 4), 3U);
  EXPECT_EQ(segment_count(0, 4), 0U);
  EXPECT_EQ(segment_range(r, 4, 0), (Range{100, 4}));
  EXPECT_EQ(segment_range(r, 4, 2), (Range{108, 2}));
}

TEST(Ring, NeighboursWrapAround) {
  EXPECT_EQ(ring_right(3, 4), 0);
  EXPECT_EQ(ring_left(0, 4), 3);
  EXPECT_EQ(ring_left(0, 1), 0);
}

// Simulates the schedule symbolically: each rank's block holds the set of ranks whose
// contribution it contains. After the reduce steps rank r must own the full block r, and after
// all steps every rank must hold every block complete.
TEST(Ring, ScheduleReducesAndGathersEveryBlock) {
  for (int p : {2, 3, 4, 5, 8}) {
    std::vector<std::vector<std::set<int>>> held(p, std::vector<std::set<int>>(p));
    for (int r = 0; r < p; ++r) {
      for (int b = 0; b < p; ++b) held[r][b] = {r};
    }
    for (int step = 0; step < ring_total_steps(p); ++step) {
      auto before = held;
      for (int r = 0; r < p; ++r) {
        const int from = ring_left(r, p);
        const int b = ring_recv_block(r, p, step);
        // The left neighbour sends exactly the block this rank expects.
        ASSERT_EQ(ring_send_block(from, p, step), b);
        if (step < ring_reduce_steps(p)) {
          held[r][b].insert(before[from][b].begin(), before[from][b].end());
        } else {
          held[r][b] = before[from][b];
        }
        // The block received now is sent on at the next step.
        EXPECT_EQ(ring_send_block(r, p, step + 1), b);
      }
      if (step == ring_reduce_steps(p) - 1) {
        for (int r = 0; r < p; ++r) EXPECT_EQ(held[r][r].size(), static_cast<size_t>(p));
      }
    }
    for (int r = 0; r < p; ++r) {
      for (int b = 0; b < p; ++b) EXPECT_EQ(held[r][b].size(), static_cast<size_t>(p)) << p;
    }
  }
}

TEST(Ring, OverwriteStepIsTheLastSendOfThatBlock) {
  for (int p : {2, 3, 5}) {
    for (int step = p - 1; step < ring_total_steps(p); ++step) {
      const int earlier = ring_overwrites_send_of_step(p, step);
      EXPECT_EQ(ring_send_block(0, p, earlier), ring_recv_block(0, p, step));
      for (int between = earlier + 1; between < step; ++between) {
        EXPECT_NE(ring_send_block(0, p, between), ring_recv_block(0, p, step));
      }
    }
  }
}

TEST(Exchange, EachRoundPairsEverySenderWithOneReceiver) {
  for (int p : {1, 2, 3, 5, 8}) {
    for (int r = 0; r < p; ++r) {
      std::set<int> heard, told;
      for (int s = 1; s < p; ++s) {
        const int from = exchange_recv_peer(r, p, s);
        // The rank this one listens to in round s sends to it in round s.
        EXPECT_EQ(exchange_send_peer(from, p, s), r);
        heard.insert(from);
        told.insert(exchange_send_peer(r, p, s));
      }
      EXPECT_EQ(heard.size(), static_cast<std::size_t>(p - 1));
      EXPECT_EQ(told.size(), static_cast<std::size_t>(p - 1));
      EXPECT_EQ(heard.count(r), 0U);
    }
  }
}

TEST(Fold, RolesAndVirtualRanks) {
  EXPECT_EQ(floor_pow2(1), 1);
  EXPECT_EQ(floor_pow2(5), 4);
  EXPECT_EQ(floor_pow2(8), 8);
  EXPECT_TRUE(is_pow2(8));
  EXPECT_FALSE(is_pow2(6));
  // P = 6: pof2 = 4, rem = 2: ranks 0 and 2 are extras for 1 and 3.
  EXPECT_EQ(fold_for(0, 6).role, FoldRole::Extra);
  EXPECT_EQ(fold_for(0, 6).partner, 1);
  EXPECT_EQ(fold_for(1, 6).role, FoldRole::Proxy);
  EXPECT_EQ(fold_for(1, 6).virtual_rank, 0);
  EXPECT_EQ(fold_for(3, 6).virtual_rank, 1);
  EXPECT_EQ(fold_for(4, 6).role, FoldRole::Core);
  EXPECT_EQ(fold_for(4, 6).virtual_rank, 2);
  for (int p : {1, 2, 3, 5, 6, 7, 8}) {
    std::set<int> virtual_ranks;
    for (int r = 0; r < p; ++r) {
      const Fold f = fold_for(r, p);
      if (f.role == FoldRole::Extra) continue;
      virtual_ranks.insert(f.virtual_rank);
      EXPECT_EQ(real_rank(f.virtual_rank, f.rem), r);
    }
    EXPECT_EQ(virtual_ranks.size(), static_cast<size_t>(floor_pow2(p)));
  }
}

TEST(Halving, EndsOwningOwnBlockAndPartnersAgree) {
  const int pof2 = 8;
  for (int v = 0; v < pof2; ++v) {
    int lo = 0;
    int blocks = pof2;
    for (int mask = pof2 / 2; mask >= 1; mask /= 2) {
      const BlockHalves h = halving_step(v, mask);
      EXPECT_EQ(h.blocks, blocks / 2);
      EXPECT_TRUE(h.keep_first == lo || h.keep_first == lo + blocks / 2);
      // The partner keeps exactly what this rank sends.
      EXPECT_EQ(halving_step(rd_partner(v, mask), mask).keep_first, h.send_first);
      lo = h.keep_first;
      blocks /= 2;
    }
    EXPECT_EQ(lo, v);
    EXPECT_EQ(blocks, 1);
  }
}

TEST(Binomial, EveryNonRootHasOneParentReachedBeforeIt) {
  for (int p : {2, 3, 5, 8}) {
    for (int rel = 1; rel < p; ++rel) {
      const int parent = binomial_parent(rel);
      EXPECT_LT(parent, rel);
      EXPECT_EQ(rel - parent, lowest_bit(rel));
    }
  }
  EXPECT_EQ(dissemination_rounds(1), 0);
  EXPECT_EQ(dissemination_rounds(5), 3);
  EXPECT_EQ(dissemination_rounds(8), 3);
}

}  // namespace
}  // namespace frugal::patterns

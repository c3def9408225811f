// Bmuf on real processes (mpirun): the serial reference for model averaging, block momentum and
// Nesterov block momentum, a compressed delta, a checkpoint mid-block, and disagreeing or bad
// parameters, with every rank checking its own result (mpi_main.cpp fails the job if any rank
// fails). Also run on frugal's UCX transport (ucx-bmuf-np2).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bmuf_cases.hpp"
#include "frugal/collectives/bmuf.hpp"
#include "frugal/error.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

constexpr int kBlocks = 6;

void expect_reference(const BmufOptions& o) {
  const auto want = testing::reference_blocks(comm().size(), o, kBlocks);
  const auto got = testing::run_bmuf(comm(), o, kBlocks);
  EXPECT_LT(testing::max_relative_error(got.blocks, want), 2e-5);
  EXPECT_GT(got.bytes, 0u);
}

TEST(MpiBmuf, ModelAveragingMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 3;
  expect_reference(o);
}

TEST(MpiBmuf, BlockMomentumMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 3;
  o.block_momentum = 0.5;
  expect_reference(o);
}

TEST(MpiBmuf, NesterovBlockMomentumMatchesTheSerialReference) {
  BmufOptions o;
  o.block_steps = 2;
  o.block_momentum = 0.5;
  o.block_lr = 0.8;
  o.nesterov = true;
  expect_reference(o);
}

TEST(MpiBmuf, OneBitDeltaSendsLessAndConverges) {
  BmufOptions dense;
  dense.block_steps = 4;
  dense.block_momentum = 0.5;
  BmufOptions onebit = dense;
  onebit.allreduce.compression.method = compression::Method::OneBit;
  const auto d = testing::run_bmuf(comm(), dense, 60);
  const auto c = testing::run_bmuf(comm(), onebit, 60);
  EXPECT_LT(c.bytes * 3, d.bytes);
  const double dense_end = testing::global_loss(comm().size(), d.blocks.back());
  const double onebit_end = testing::global_loss(comm().size(), c.blocks.back());
  EXPECT_LT(onebit_end, dense_end * 1.05 + 1e-4);
}

// A checkpoint taken mid-block on every process, restored into a fresh filter: the run goes on
// exactly as the uninterrupted one (each rank's own 1-bit residuals included).
TEST(MpiBmuf, SaveAndRestoreContinuesExactly) {
  BmufOptions o;
  o.block_steps = 3;
  o.block_momentum = 0.6;
  o.nesterov = true;
  o.allreduce.compression.method = compression::Method::OneBit;
  testing::RankModel model;
  Bmuf bmuf(comm(), model.tensors(), o);
  for (int s = 0; s < 7; ++s) {
    testing::local_step(comm().rank(), model.x);
    bmuf.step();
  }
  const std::vector<std::byte> image = bmuf.save_state();
  const std::vector<float> saved = model.x;
  for (int s = 0; s < 8; ++s) {
    testing::local_step(comm().rank(), model.x);
    bmuf.step();
  }
  testing::RankModel other;
  Bmuf again(comm(), other.tensors(), o);
  again.restore_state(image);
  other.x = saved;
  for (int s = 0; s < 8; ++s) {
    testing::local_step(comm().rank(), other.x);
    again.step();
  }
  EXPECT_EQ(other.x, model.x);
  EXPECT_EQ(again.save_state(), bmuf.save_state());
  EXPECT_EQ(again.blocks(), 5u);
}

ErrorCode code_of(const BmufOptions& o) {
  testing::RankModel model;
  try {
    Bmuf bmuf(comm(), model.tensors(), o);
  } catch (const Error& e) {
    return e.code();
  }
  ADD_FAILURE() << "rank " << comm().rank() << " did not throw";
  return ErrorCode::Internal;
}

TEST(MpiBmuf, DisagreeingRanksGetMismatchEverywhere) {
  BmufOptions o;
  o.block_steps = comm().rank() == comm().size() - 1 ? 5 : 4;
  EXPECT_EQ(code_of(o), ErrorCode::Mismatch);
  BmufOptions n;
  n.nesterov = comm().rank() == 0;
  EXPECT_EQ(code_of(n), ErrorCode::Mismatch);
}

TEST(MpiBmuf, BadParameterOnOneRankIsInvalidArgumentEverywhere) {
  BmufOptions o;
  if (comm().rank() == comm().size() - 1) o.block_lr = -1;
  EXPECT_EQ(code_of(o), ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace frugal

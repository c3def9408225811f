// frugal-train's --guardrail under mpirun -np 2 on the synthetic dataset: bounds that 1-bit's
// residual ratio (about 1 on these gradients) passes and fp16's (about 1e-3) does not make the
// compressed buckets climb to fp16 and, after the patience, come back: every change is a
// "guardrail" record in rank 0's JSON log, and both ranks end with bit-identical weights; with
// and without momentum correction (1-bit's default in frugal-train), whose buckets carry
// velocities instead of gradients.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "synthetic_training.hpp"
#include "trainer.hpp"

namespace frugal::train {
namespace {

using testing::counted_communicator;
using testing::flat_parameters;
using testing::small_options;
using testing::SyntheticDataset;

std::vector<std::string> lines_of(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class GuardrailMpi : public ::testing::TestWithParam<bool> {};

TEST_P(GuardrailMpi, ChangesAreLoggedAndRanksStayBitIdentical) {
  torch::set_num_threads(1);
  testing::Counted world = counted_communicator(MPI_COMM_WORLD);
  ASSERT_EQ(world.comm->size(), 2) << "run under mpirun -np 2";
  const int rank = world.comm->rank();
  const auto dir = std::filesystem::temp_directory_path() / "frugal-train-test-guardrail";
  if (rank == 0) std::filesystem::create_directories(dir);
  MPI_Barrier(MPI_COMM_WORLD);

  const SyntheticDataset train(256, 3), val(64, 4);
  TrainOptions o = small_options(3);
  o.schedule.global_batch = 32;
  o.schedule.ref_batch = 32;
  o.sync.compression.method = compression::Method::OneBit;
  o.sgd.momentum_correction = GetParam();
  o.sync.guardrail.enabled = true;
  o.sync.guardrail.lower = 0.05;
  o.sync.guardrail.upper = 0.2;
  o.sync.guardrail.cooldown = 2;
  o.sync.guardrail.patience = 4;
  o.log_path = (dir / "guardrail.jsonl").string();
  std::ostringstream out;
  const RunResult r = run_training(*world.comm, world.counter, train, val, o, out);
  ASSERT_EQ(r.epochs.size(), 3u);
  EXPECT_LT(r.epochs.back().train_loss, r.epochs.front().train_loss);

  // Bit-identical weights: rank 0's, broadcast, equal every rank's own.
  torch::Tensor mine = flat_parameters(*r.model).contiguous();
  torch::Tensor zeros = mine.clone();
  MPI_Bcast(zeros.data_ptr<float>(), static_cast<int>(zeros.numel()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  EXPECT_TRUE(torch::equal(mine, zeros)) << "rank " << rank << " differs from rank 0";

  if (rank == 0) {
    int up = 0, down = 0, messages = 0;
    for (const std::string& line : lines_of(o.log_path)) {
      if (line.find("\"kind\":\"guardrail\"") == std::string::npos) continue;
      for (const char* field : {"\"step\":", "\"bucket\":", "\"from_rung\":", "\"to_rung\":",
                                "\"ratio\":", "\"relative_error\":"}) {
        EXPECT_NE(line.find(field), std::string::npos) << field << " missing in " << line;
      }
      up += line.find("\"from\":\"onebit\",\"to\":\"fp16\"") != std::string::npos;
      down += line.find("\"from\":\"fp16\",\"to\":\"onebit\"") != std::string::npos;
    }
    const std::string printed = out.str();
    for (std::size_t at = printed.find("guardrail: step"); at != std::string::npos;
         at = printed.find("guardrail: step", at + 1)) {
      ++messages;
    }
    EXPECT_GE(up, 1) << printed;
    EXPECT_GE(down, 1) << printed;
    EXPECT_EQ(messages, up + down) << "one progress line per change";
    std::filesystem::remove_all(dir);
  }
}

INSTANTIATE_TEST_SUITE_P(MomentumCorrection, GuardrailMpi, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "On" : "Off"; });

}  // namespace
}  // namespace frugal::train

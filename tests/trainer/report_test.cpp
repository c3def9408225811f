#include "report.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "atomic_file.hpp"
#include "frugal/error.hpp"

namespace frugal::train {
namespace {

TEST(Report, JsonHasEveryFieldAndNullsForMissingValidation) {
  LogRecord r;
  r.kind = "step";
  r.epoch = 2;
  r.step = 17;
  r.lr = 0.05;
  r.global_batch = 256;
  r.train_loss = 1.25;
  r.train_top1 = 0.5;
  r.images_per_sec = 1000;
  r.wire_bytes = 123456;
  r.steps = 4;
  r.wire_bytes_per_step = 30864;
  r.data_s = 0.25;
  const std::string json = to_json(r);
  for (const char* field :
       {"\"kind\":\"step\"", "\"epoch\":2", "\"step\":17", "\"lr\":0.05", "\"global_batch\":256",
        "\"train_loss\":1.25", "\"train_top1\":0.5", "\"val_loss\":null", "\"val_top1\":null",
        "\"val_top5\":null", "\"images_per_sec\":1000", "\"wire_bytes\":123456",
        "\"wire_bytes_per_step\":30864", "\"data_s\":0.25", "\"compute_s\":0", "\"comm_wait_s\":0",
        "\"optimizer_s\":0"}) {
    EXPECT_NE(json.find(field), std::string::npos) << field << " in " << json;
  }
  r.val_top1 = 0.875;
  r.train_loss = NAN;  // JSON has no NaN
  const std::string with_val = to_json(r);
  EXPECT_NE(with_val.find("\"val_top1\":0.875"), std::string::npos) << with_val;
  EXPECT_NE(with_val.find("\"train_loss\":null"), std::string::npos) << with_val;
  // The BMUF fields appear only when set (--sync bmuf).
  EXPECT_EQ(with_val.find("block"), std::string::npos) << with_val;
  r.blocks = 3;
  r.block = 11;
  r.block_bytes = 4096;
  const std::string with_blocks = to_json(r);
  for (const char* field : {"\"blocks\":3", "\"block\":11", "\"block_bytes\":4096"}) {
    EXPECT_NE(with_blocks.find(field), std::string::npos) << field << " in " << with_blocks;
  }
}

TEST(Report, OnlyTheEnabledRankWrites) {
  const auto path = std::filesystem::temp_directory_path() / "frugal-report-test.jsonl";
  std::ostringstream out;
  {
    Reporter silent(false, out, false, path.string(), false);
    silent.epoch(LogRecord{}, 1);
  }
  EXPECT_TRUE(out.str().empty());
  EXPECT_FALSE(std::filesystem::exists(path));
  {
    Reporter rank0(true, out, false, path.string(), false);
    rank0.epoch(LogRecord{}, 1);
  }
  EXPECT_NE(out.str().find("epoch 1/1"), std::string::npos) << out.str();
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_EQ(line.front(), '{');
  std::filesystem::remove(path);
  EXPECT_THROW(Reporter(true, out, false, "/nonexistent-dir/x.jsonl", false), Error);
}

TEST(Report, AutotuneRecordsCarryTheDecisionAndEachCandidatesCost) {
  const AutotuneRecord move{1, 40, 2, "dense", "fp16", false, {}};
  EXPECT_EQ(to_json(move),
            "{\"kind\":\"autotune\",\"epoch\":1,\"step\":40,\"bucket\":2,\"from\":\"dense\","
            "\"to\":\"fp16\",\"decision\":false,\"costs\":[]}");
  const AutotuneRecord decision{1, 46, 2, "ternary", "fp16", true, {0.5, 0.25, NAN}};
  EXPECT_EQ(to_json(decision),
            "{\"kind\":\"autotune\",\"epoch\":1,\"step\":46,\"bucket\":2,\"from\":\"ternary\","
            "\"to\":\"fp16\",\"decision\":true,\"costs\":[0.5,0.25,null]}");
}

TEST(Report, Durations) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(65), "1:05");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(NAN), "?");
}

TEST(AtomicFile, ReplacesWholeFileAndLeavesNoTemporary) {
  const auto dir = std::filesystem::temp_directory_path() / "frugal-atomic-test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const auto path = dir / "f.bin";
  const std::string first(100000, 'a');
  const std::string second = "short";
  write_file_atomically(path, std::as_bytes(std::span(first.data(), first.size())));
  EXPECT_EQ(read_file(path).size(), first.size());
  write_file_atomically(path, std::as_bytes(std::span(second.data(), second.size())));
  const auto bytes = read_file(path);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()), second);
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1);
  EXPECT_THROW(write_file_atomically(dir / "missing-subdir" / "x", {}), Error);
  EXPECT_THROW(read_file(dir / "absent"), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace frugal::train

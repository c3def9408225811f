#include "schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <numeric>

#include "frugal/error.hpp"

namespace frugal::train {
namespace {

ScheduleOptions goyal() {
  ScheduleOptions o;
  o.base_lr = 0.1;
  o.ref_batch = 256;
  o.global_batch = 1024;
  o.warmup_epochs = 5;
  o.decay = Decay::Step;
  o.lr_steps = {30, 60, 80};
  o.lr_gamma = 0.1;
  o.epochs = 90;
  return o;
}

TEST(Schedule, LinearScalingRule) {
  ScheduleOptions o = goyal();
  EXPECT_DOUBLE_EQ(scaled_lr(o), 0.4);
  o.global_batch = 8192;
  EXPECT_DOUBLE_EQ(scaled_lr(o), 3.2);
  o.global_batch = 128;
  EXPECT_DOUBLE_EQ(scaled_lr(o), 0.05);
}

TEST(Schedule, GradualWarmupIsPerIteration) {
  const ScheduleOptions o = goyal();
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 0, 100), 0.1);
  // t = 0.01 epochs: 0.1 + 0.3 * 0.01 / 5
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 1, 100), 0.1 + 0.3 * 0.01 / 5);
  EXPECT_DOUBLE_EQ(learning_rate(o, 2, 50, 100), 0.25);  // t = 2.5: half way
  EXPECT_DOUBLE_EQ(learning_rate(o, 4, 99, 100), 0.1 + 0.3 * 4.99 / 5);
  EXPECT_DOUBLE_EQ(learning_rate(o, 5, 0, 100), 0.4);  // warmup over
  EXPECT_LT(learning_rate(o, 4, 99, 100), 0.4);
}

TEST(Schedule, StepDecayAtMilestones) {
  const ScheduleOptions o = goyal();
  EXPECT_DOUBLE_EQ(learning_rate(o, 29, 99, 100), 0.4);
  EXPECT_DOUBLE_EQ(learning_rate(o, 30, 0, 100), 0.04);
  EXPECT_DOUBLE_EQ(learning_rate(o, 59, 50, 100), 0.04);
  EXPECT_DOUBLE_EQ(learning_rate(o, 60, 0, 100), 0.004);
  EXPECT_DOUBLE_EQ(learning_rate(o, 85, 3, 100), 0.0004);
}

TEST(Schedule, CosineDecay) {
  ScheduleOptions o;
  o.base_lr = 0.1;
  o.global_batch = o.ref_batch = 256;
  o.decay = Decay::Cosine;
  o.epochs = 10;
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 0, 50), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 5, 0, 50), 0.05);
  EXPECT_DOUBLE_EQ(learning_rate(o, 2, 25, 50), 0.05 * (1 + std::cos(std::numbers::pi / 4)));
  EXPECT_NEAR(learning_rate(o, 9, 49, 50), 0.05 * (1 + std::cos(std::numbers::pi * 9.98 / 10)),
              1e-15);
  // With warmup the cosine starts when warmup ends and spans the remaining epochs.
  o.warmup_epochs = 2;
  o.global_batch = 512;  // scaled 0.2
  EXPECT_DOUBLE_EQ(learning_rate(o, 1, 0, 50), 0.15);
  EXPECT_DOUBLE_EQ(learning_rate(o, 2, 0, 50), 0.2);
  EXPECT_DOUBLE_EQ(learning_rate(o, 6, 0, 50), 0.1);
}

TEST(Schedule, BatchGrowthKeepsTheLearningRate) {
  ScheduleOptions o;
  o.base_lr = 0.1;
  o.global_batch = 256;
  o.decay = Decay::None;
  o.batch_stages = parse_batch_schedule("0:256,30:1280,60:6400", "--batch-schedule");
  ASSERT_EQ(o.batch_stages.size(), 3u);
  EXPECT_EQ(o.batch_stages[1], (BatchStage{30, 1280}));
  EXPECT_EQ(global_batch_at(o, 0), 256);
  EXPECT_EQ(global_batch_at(o, 29), 256);
  EXPECT_EQ(global_batch_at(o, 30), 1280);
  EXPECT_EQ(global_batch_at(o, 59), 1280);
  EXPECT_EQ(global_batch_at(o, 60), 6400);
  EXPECT_EQ(global_batch_at(o, 89), 6400);
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 0, 10), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 30, 0, 10), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 75, 3, 10), 0.1);
  // Without a stage at epoch 0 the first epochs use --batch-size.
  o.global_batch = 128;
  o.batch_stages = parse_batch_schedule("10:512", "--batch-schedule");
  EXPECT_EQ(global_batch_at(o, 9), 128);
  EXPECT_EQ(global_batch_at(o, 10), 512);
}

TEST(Schedule, LocalBatchMustDivideExactly) {
  EXPECT_EQ(local_batch(256, 2), 128);
  EXPECT_EQ(local_batch(6400, 4), 1600);
  EXPECT_THROW(local_batch(255, 2), Error);
  EXPECT_THROW(local_batch(2, 4), Error);
}

TEST(Schedule, MicroBatchSplitIsExactAndBalanced) {
  EXPECT_EQ(micro_batches(128, 0), (std::vector<std::int64_t>{128}));
  EXPECT_EQ(micro_batches(128, 128), (std::vector<std::int64_t>{128}));
  EXPECT_EQ(micro_batches(128, 64), (std::vector<std::int64_t>{64, 64}));
  EXPECT_EQ(micro_batches(100, 32), (std::vector<std::int64_t>{25, 25, 25, 25}));
  EXPECT_EQ(micro_batches(10, 4), (std::vector<std::int64_t>{4, 3, 3}));
  EXPECT_EQ(micro_batches(1600, 256),
            (std::vector<std::int64_t>{229, 229, 229, 229, 228, 228, 228}));
  for (std::int64_t local : {1, 7, 97, 1600, 3200}) {
    for (std::int64_t cap : {1, 3, 64, 256}) {
      const auto sizes = micro_batches(local, cap);
      EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), std::int64_t{0}), local);
      EXPECT_LE(sizes.front(), cap);
      EXPECT_LE(sizes.front() - sizes.back(), 1);
      EXPECT_EQ(static_cast<std::int64_t>(sizes.size()), (local + cap - 1) / cap);
    }
  }
  EXPECT_THROW(micro_batches(0, 4), Error);
}

TEST(Schedule, ParsingAndValidationNameTheOption) {
  EXPECT_EQ(parse_int_list("30,60,80", "--lr-steps"), (std::vector<std::int64_t>{30, 60, 80}));
  EXPECT_TRUE(parse_int_list("", "--lr-steps").empty());
  try {
    parse_int_list("30,x", "--lr-steps");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--lr-steps"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_batch_schedule("0:256,0:512", "--batch-schedule"), Error);
  EXPECT_THROW(parse_batch_schedule("0-256", "--batch-schedule"), Error);
  EXPECT_THROW(parse_batch_schedule("5:0", "--batch-schedule"), Error);
  ScheduleOptions o = goyal();
  EXPECT_NO_THROW(validate(o));
  o.lr_steps = {60, 30};
  EXPECT_THROW(validate(o), Error);
  o = goyal();
  o.base_lr = 0;
  EXPECT_THROW(validate(o), Error);
  o = goyal();
  o.warmup_epochs = -1;
  EXPECT_THROW(validate(o), Error);
}

// --lr-decay's values come from the Decay name table.
TEST(Decay, NamesRoundTrip) {
  const std::vector<Decay> values = enum_values<Decay>();
  EXPECT_EQ(values.size(), 3u);
  for (const Decay d : values) EXPECT_EQ(parse_enum<Decay>(enum_name(d)), d);
  EXPECT_EQ(enum_choices<Decay>(), "step, cosine, none");
  EXPECT_FALSE(parse_enum<Decay>("linear").has_value());
}

}  // namespace
}  // namespace frugal::train

// GradientBuckets with BucketOptions::hierarchical on loopback ranks simulating 2 hosts x 2
// ranks: each bucket's result is hierarchical_allreduce's of that bucket's buffer (with the
// bucket's own HierarchicalState, bit-identical on every rank), checkpoints, residual scaling,
// skipped and undone steps keep that true, and what does not combine is refused by name on
// every rank.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/error.hpp"
#include "hierarchical_reference.hpp"
#include "hierarchy_harness.hpp"

namespace frugal {
namespace {

using testing::host_identities;
using testing::integer_input;

// Registration order (backward order); with kBucketBytes, "w1" and "w2" get a compressed bucket
// each and the vectors "b1", "b2" one dense bucket (dense_vectors).
struct TensorSpec {
  const char* name;
  std::size_t count;
  std::size_t dims;
};
constexpr TensorSpec kTensors[] = {{"w1", 300, 2}, {"b1", 20, 1}, {"w2", 517, 4}, {"b2", 9, 1}};
constexpr std::size_t kBucketBytes = 400 * sizeof(float);

BucketOptions hierarchical_options(const std::vector<std::string>& ids, int rank) {
  BucketOptions o;
  o.bucket_bytes = kBucketBytes;
  o.allreduce.compression.method = compression::Method::OneBit;
  o.allreduce.compression.bucket = 64;
  o.allreduce.non_finite = NonFiniteAction::Skip;
  o.hierarchical = true;
  o.topology = topology_from_identities(ids, rank);
  return o;
}

void add_tensors(GradientBuckets& buckets) {
  for (const TensorSpec& t : kTensors) buckets.add(t.name, t.count, t.dims);
}

// Tensor t's gradient on `rank` at `step`: small integers, so dense sums are exact.
std::vector<float> gradient(int rank, int step, std::size_t t) {
  return integer_input(rank * 7 + static_cast<int>(t), step, kTensors[t].count);
}

using Grads = std::vector<std::vector<float>>;

// One step: marks every tensor (in registration order) and finishes; returns the results.
Grads step(GradientBuckets& buckets, int rank, int s, float poison = 0) {
  Grads grads;
  for (std::size_t t = 0; t < std::size(kTensors); ++t) grads.push_back(gradient(rank, s, t));
  if (poison != 0) grads[2][5] = poison;
  for (std::size_t t = 0; t < grads.size(); ++t) buckets.mark_ready(t, grads[t]);
  buckets.finish();
  return grads;
}

bool same_bits(const Grads& a, const Grads& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size() ||
        std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

struct Outcome {
  std::optional<ErrorCode> code;
  std::string message;
};

std::vector<Outcome> outcomes_of(const std::vector<std::string>& ids,
                                 const std::function<void(Communicator&)>& body) {
  std::mutex mutex;
  std::vector<Outcome> out(ids.size());
  testing::run_hosts(
      ids,
      [&](Communicator& comm, Hierarchy&) {
        Outcome o;
        try {
          body(comm);
        } catch (const Error& e) {
          o.code = e.code();
          o.message = e.what();
        }
        std::lock_guard lock(mutex);
        out[static_cast<std::size_t>(comm.rank())] = o;
      },
      nullptr, std::chrono::seconds(20), /*fail_fast=*/false);
  return out;
}

void expect_everywhere(const std::vector<Outcome>& outcomes, ErrorCode code,
                       const std::vector<std::string>& needles) {
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    ASSERT_TRUE(outcomes[r].code.has_value()) << "rank " << r << " threw nothing";
    EXPECT_EQ(*outcomes[r].code, code) << "rank " << r << ": " << outcomes[r].message;
    for (const std::string& needle : needles) {
      EXPECT_NE(outcomes[r].message.find(needle), std::string::npos)
          << "rank " << r << ": " << outcomes[r].message;
    }
  }
}

TEST(HierarchicalBuckets, EachBucketIsItsHierarchicalAllreduceBitIdenticallyOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  constexpr int kSteps = 3;
  std::mutex mutex;
  std::vector<std::vector<Grads>> results(ids.size());
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy& hierarchy) {
    const int rank = comm.rank();
    const BucketOptions options = hierarchical_options(ids, rank);
    GradientBuckets buckets(comm, options);
    add_tensors(buckets);
    ASSERT_NE(buckets.topology(), nullptr);
    EXPECT_EQ(buckets.topology()->host_count(), 2);
    EXPECT_EQ(buckets.topology()->ranks_on_host(), 2);

    // The reference: each bucket's buffer (its tensors side by side in registration order)
    // through hierarchical_allreduce with a HierarchicalState of its own, on the harness's
    // hierarchy. Onebit and dense are deterministic, so the buckets' per-layout seeds do not
    // enter.
    std::vector<HierarchicalState> states;
    std::vector<Grads> mine;
    for (int s = 0; s < kSteps; ++s) {
      const Grads got = step(buckets, rank, s);
      ASSERT_EQ(buckets.bucket_count(), 3u);
      if (s == 0) states.resize(buckets.bucket_count());
      std::size_t wire = 0;
      Grads want(std::size(kTensors));
      for (std::size_t b = 0; b < buckets.bucket_count(); ++b) {
        std::vector<float> data;
        std::vector<std::size_t> segments;
        std::vector<std::size_t> members;
        for (std::size_t t = 0; t < std::size(kTensors); ++t) {
          if (buckets.bucket_of(t) != b) continue;
          const std::vector<float> g = gradient(rank, s, t);
          data.insert(data.end(), g.begin(), g.end());
          segments.push_back(g.size());
          members.push_back(t);
        }
        AllreduceOptions o = options.allreduce;
        AllreduceStats stats;
        o.stats = &stats;
        o.segments = segments;
        HierarchicalState* state = &states[b];
        if (buckets.bucket_is_dense(b)) {
          o.compression = {};
          o.error_feedback = false;
          state = nullptr;
        }
        hierarchical_allreduce(hierarchy, std::span<float>(data), o, state);
        wire += stats.wire_bytes_sent;
        std::size_t at = 0;
        for (std::size_t t : members) {
          want[t].assign(data.begin() + static_cast<std::ptrdiff_t>(at),
                         data.begin() + static_cast<std::ptrdiff_t>(at + kTensors[t].count));
          at += kTensors[t].count;
        }
        if (state != nullptr) {
          // Its residual is the share's, carried across steps like the reference's.
          const std::span<const float> a = buckets.allreduce_state(b).worker_residual();
          const std::span<const float> r = state->share().worker_residual();
          ASSERT_EQ(a.size(), r.size());
          EXPECT_GT(a.size(), 0u);
          EXPECT_EQ(std::memcmp(a.data(), r.data(), a.size() * sizeof(float)), 0);
        }
      }
      EXPECT_TRUE(same_bits(got, want)) << "rank " << rank << " step " << s;
      EXPECT_EQ(buckets.last_step_wire_bytes(), wire);
      EXPECT_GT(wire, 0u);
      mine.push_back(got);
    }
    std::lock_guard lock(mutex);
    results[static_cast<std::size_t>(rank)] = std::move(mine);
  });
  for (std::size_t r = 1; r < results.size(); ++r) {
    for (int s = 0; s < kSteps; ++s) {
      EXPECT_TRUE(same_bits(results[r][static_cast<std::size_t>(s)],
                            results[0][static_cast<std::size_t>(s)]))
          << "rank " << r << " step " << s;
    }
  }
}

TEST(HierarchicalBuckets, CheckpointRoundTripAndScaledResidualsGiveTheSameNextStep) {
  const std::vector<std::string> ids = host_identities(2, 2, true);
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy&) {
    const int rank = comm.rank();
    const BucketOptions options = hierarchical_options(ids, rank);
    GradientBuckets a(comm, options);
    add_tensors(a);
    step(a, rank, 0);
    step(a, rank, 1);
    const std::vector<std::byte> image = a.save_state();

    GradientBuckets b(comm, options);
    add_tensors(b);
    b.restore_state(image);
    GradientBuckets fresh(comm, options);
    add_tensors(fresh);

    a.scale_residuals(0.5f);
    b.scale_residuals(0.5f);
    const Grads from_a = step(a, rank, 2);
    const Grads from_b = step(b, rank, 2);
    EXPECT_TRUE(same_bits(from_a, from_b));
    // Neither the restore nor the scaling is a no-op: without them the step differs.
    EXPECT_FALSE(same_bits(from_a, step(fresh, rank, 2)));
    GradientBuckets unscaled(comm, options);
    add_tensors(unscaled);
    unscaled.restore_state(image);
    EXPECT_FALSE(same_bits(from_a, step(unscaled, rank, 2)));
  });
}

TEST(HierarchicalBuckets, AnImageOfTheOtherModeIsRefusedByName) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy&) {
    const int rank = comm.rank();
    BucketOptions flat_options = hierarchical_options(ids, rank);
    flat_options.hierarchical = false;
    flat_options.topology.reset();
    GradientBuckets flat(comm, flat_options);
    add_tensors(flat);
    step(flat, rank, 0);
    GradientBuckets hier(comm, hierarchical_options(ids, rank));
    add_tensors(hier);
    step(hier, rank, 0);
    for (const auto& [image, into] :
         {std::pair{flat.save_state(), &hier}, std::pair{hier.save_state(), &flat}}) {
      try {
        into->restore_state(image);
        ADD_FAILURE() << "restored an image of the other mode";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
        EXPECT_NE(std::string(e.what()).find("hierarchical"), std::string::npos) << e.what();
      }
    }
  });
}

TEST(HierarchicalBuckets, SkippedAndUndoneStepsLeaveTheStatesAsBefore) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy&) {
    const int rank = comm.rank();
    const BucketOptions options = hierarchical_options(ids, rank);
    GradientBuckets skipping(comm, options), undoing(comm, options), plain(comm, options);
    add_tensors(skipping);
    add_tensors(undoing);
    add_tensors(plain);
    step(skipping, rank, 0);
    step(undoing, rank, 0);
    step(plain, rank, 0);

    // Rank 1's NaN skips the step on every rank; the gradients keep their input.
    const Grads skipped =
        step(skipping, rank, 1, rank == 1 ? std::numeric_limits<float>::quiet_NaN() : 0.0f);
    EXPECT_TRUE(skipping.last_step_skipped());
    if (rank != 1) {
      for (std::size_t t = 0; t < std::size(kTensors); ++t) {
        EXPECT_EQ(skipped[t], gradient(rank, 1, t)) << kTensors[t].name;
      }
    }
    // A finite step undone after the fact.
    step(undoing, rank, 1);
    EXPECT_FALSE(undoing.last_step_skipped());
    undoing.undo_last_step();

    const Grads want = step(plain, rank, 2);
    EXPECT_TRUE(same_bits(step(skipping, rank, 2), want));
    EXPECT_TRUE(same_bits(step(undoing, rank, 2), want));
  });
}

TEST(HierarchicalBuckets, AMissingTensorIsRefusedPromptlyOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<Outcome> outcomes = outcomes_of(ids, [&](Communicator& comm) {
    GradientBuckets buckets(comm, hierarchical_options(ids, comm.rank()));
    add_tensors(buckets);
    Grads grads;
    for (std::size_t t = 0; t < std::size(kTensors); ++t) {
      grads.push_back(gradient(comm.rank(), 0, t));
      if (comm.rank() == 3 && t == 1) continue;
      buckets.mark_ready(t, grads[t]);
    }
    buckets.finish();
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  for (std::size_t r = 0; r < outcomes.size(); ++r) {
    ASSERT_TRUE(outcomes[r].code.has_value()) << "rank " << r;
    EXPECT_EQ(*outcomes[r].code, r == 3 ? ErrorCode::InvalidArgument : ErrorCode::Mismatch)
        << "rank " << r << ": " << outcomes[r].message;
    EXPECT_NE(outcomes[r].message.find("b1"), std::string::npos) << outcomes[r].message;
  }
}

TEST(HierarchicalBuckets, WhatDoesNotCombineIsRefusedByNameOnEveryRank) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  // The guardrail: refused by the constructor, before anything is sent.
  expect_everywhere(outcomes_of(ids,
                                [&](Communicator& comm) {
                                  BucketOptions o = hierarchical_options(ids, comm.rank());
                                  o.guardrail.enabled = true;
                                  GradientBuckets buckets(comm, o);
                                }),
                    ErrorCode::InvalidArgument, {"hierarchical", "guardrail"});
  // A topology without hierarchical.
  expect_everywhere(outcomes_of(ids,
                                [&](Communicator& comm) {
                                  BucketOptions o = hierarchical_options(ids, comm.rank());
                                  o.hierarchical = false;
                                  GradientBuckets buckets(comm, o);
                                }),
                    ErrorCode::InvalidArgument, {"topology", "hierarchical"});
  // Hosts of unequal size: 3 ranks on one host, 1 on the other (the harness's own hierarchy
  // keeps `ids`).
  const std::vector<std::string> unequal = {"a", "a", "a", "b"};
  expect_everywhere(outcomes_of(ids,
                                [&](Communicator& comm) {
                                  BucketOptions o = hierarchical_options(ids, comm.rank());
                                  o.topology = topology_from_identities(unequal, comm.rank());
                                  GradientBuckets buckets(comm, o);
                                }),
                    ErrorCode::InvalidArgument, {"topology"});
}

TEST(HierarchicalBuckets, ImagesOfAnotherRankAndRedistributionAreRefused) {
  const std::vector<std::string> ids = host_identities(2, 2, false);
  std::mutex mutex;
  std::vector<std::vector<std::byte>> images(ids.size());
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy&) {
    GradientBuckets buckets(comm, hierarchical_options(ids, comm.rank()));
    add_tensors(buckets);
    step(buckets, comm.rank(), 0);
    std::lock_guard lock(mutex);
    images[static_cast<std::size_t>(comm.rank())] = buckets.save_state();
  });
  // Hosts regrouped on resume, so that ranks 1 and 2 get the image of another local index (its
  // share, bound to that place) while ranks 0 and 3 get their own: restore_state is local and
  // cannot refuse on every rank, so the next finish() does, promptly, on every rank.
  const auto start = std::chrono::steady_clock::now();
  expect_everywhere(outcomes_of(ids,
                                [&](Communicator& comm) {
                                  GradientBuckets buckets(comm,
                                                          hierarchical_options(ids, comm.rank()));
                                  add_tensors(buckets);
                                  const int r = comm.rank();
                                  const int from = r == 1 || r == 2 ? r ^ 1 : r;
                                  buckets.restore_state(images[static_cast<std::size_t>(from)]);
                                  step(buckets, r, 1);
                                }),
                    ErrorCode::Mismatch, {"bound to"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  // Their own images restore and step.
  testing::run_hosts(ids, [&](Communicator& comm, Hierarchy&) {
    GradientBuckets buckets(comm, hierarchical_options(ids, comm.rank()));
    add_tensors(buckets);
    buckets.restore_state(images[static_cast<std::size_t>(comm.rank())]);
    EXPECT_NO_THROW(step(buckets, comm.rank(), 1));
  });
  BucketOptions flat = hierarchical_options(ids, 0);
  flat.hierarchical = false;
  flat.topology.reset();
  for (const BucketOptions& options : {hierarchical_options(ids, 0), flat}) {
    try {
      GradientBuckets::redistribute_state(images, 2, options);
      ADD_FAILURE() << "redistributed hierarchical states";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("hierarchical"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace frugal

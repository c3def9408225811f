// The collectives' enums read their names from one table each: every enumerator round-trips
// through to_string and parse, aliases parse to their enumerator, and the lists in messages
// come from the same table.
#include <gtest/gtest.h>

#include <string>

#include "agreement.hpp"
#include "frugal/collectives/allreduce.hpp"

namespace frugal {
namespace {

TEST(EnumNames, EveryAllreduceAlgorithmRoundTrips) {
  const std::vector<AllreduceAlgorithm> all = enum_values<AllreduceAlgorithm>();
  ASSERT_EQ(all.size(), 8u);  // Auto .. Allgather, each once despite the aliases
  for (int i = 0; i < 8; ++i) {
    const auto a = static_cast<AllreduceAlgorithm>(i);
    EXPECT_EQ(all[static_cast<std::size_t>(i)], a);
    EXPECT_NE(to_string(a), "unknown") << i;
    EXPECT_EQ(parse_allreduce_algorithm(to_string(a)), a) << to_string(a);
  }
  EXPECT_EQ(to_string(AllreduceAlgorithm::RecursiveDoubling), "recursive_doubling");
  EXPECT_EQ(to_string(AllreduceAlgorithm::SparseRecursiveDoubling), "sparse_rd");
  EXPECT_EQ(parse_allreduce_algorithm("rd"), AllreduceAlgorithm::RecursiveDoubling);
  EXPECT_EQ(parse_allreduce_algorithm("sparse_recursive_doubling"),
            AllreduceAlgorithm::SparseRecursiveDoubling);
  EXPECT_EQ(parse_allreduce_algorithm("Ring"), std::nullopt);
  EXPECT_EQ(parse_allreduce_algorithm(""), std::nullopt);
  EXPECT_EQ(to_string(static_cast<AllreduceAlgorithm>(8)), "unknown");
  EXPECT_EQ(enum_choices<AllreduceAlgorithm>(),
            "auto, ring, recursive_doubling, rabenseifner, two_phase, sparse_allgather, "
            "sparse_rd, allgather");
}

TEST(EnumNames, SupportedAlgorithmsListTheTablesNamesPerMethod) {
  using compression::Method;
  EXPECT_EQ(supported_algorithms(Method::None), "ring, recursive_doubling, rabenseifner");
  EXPECT_EQ(supported_algorithms(Method::OneBit), "two_phase, allgather");
  EXPECT_EQ(supported_algorithms(Method::TopK), "sparse_allgather, sparse_rd");
  EXPECT_EQ(supported_algorithms(static_cast<Method>(99)), "");
}

TEST(EnumNames, EveryNonFiniteActionRoundTrips) {
  const std::vector<NonFiniteAction> all = enum_values<NonFiniteAction>();
  ASSERT_EQ(all.size(), 4u);
  for (NonFiniteAction a : all) {
    EXPECT_NE(to_string(a), "unknown");
    EXPECT_EQ(parse_non_finite_action(to_string(a)), a) << to_string(a);
  }
  EXPECT_EQ(to_string(NonFiniteAction::Skip), "skip");
  EXPECT_EQ(parse_non_finite_action("SKIP"), std::nullopt);
  EXPECT_EQ(to_string(static_cast<NonFiniteAction>(9)), "unknown");
}

TEST(EnumNames, EveryCollectiveKindRoundTrips) {
  using detail::CollectiveKind;
  const std::vector<CollectiveKind> all = enum_values<CollectiveKind>();
  ASSERT_EQ(all.size(), 8u);  // Allreduce = 1 .. Barrier = 8
  for (int i = 1; i <= 8; ++i) {
    const auto k = static_cast<CollectiveKind>(i);
    EXPECT_EQ(all[static_cast<std::size_t>(i - 1)], k);
    EXPECT_NE(detail::to_string(k), "unknown") << i;
    EXPECT_EQ(parse_enum<CollectiveKind>(detail::to_string(k)), k) << detail::to_string(k);
  }
  EXPECT_EQ(detail::to_string(CollectiveKind::ReduceScatter), "reduce_scatter");
  EXPECT_EQ(detail::to_string(static_cast<CollectiveKind>(0)), "unknown");
}

}  // namespace
}  // namespace frugal

#pragma once

// One name table per enum: to_string, parse and the list of accepted names in error messages all
// read the same table, so adding an enumerator means adding one row, not editing three switches.
//
// An enum opts in by specialising EnumNames next to its declaration:
//
//   template <>
//   struct EnumNames<ReduceOp> {
//     static constexpr std::array<EnumName<ReduceOp>, 2> table{{{ReduceOp::Sum, "sum"},
//                                                              {ReduceOp::Average, "average"}}};
//   };
//
// The first row of a value gives its canonical name (what enum_name returns); later rows with
// the same value are aliases that parse_enum accepts and enum_choices does not list.
// Everything here is constexpr or allocation-free except enum_choices, which is for error paths.

#include <array>
#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace frugal {

template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

template <typename E>
struct EnumNames;

template <typename E>
concept NamedEnum = requires {
  { EnumNames<E>::table.size() } -> std::convertible_to<std::size_t>;
  { EnumNames<E>::table[0].value } -> std::convertible_to<E>;
};

// Canonical name of `value`, or "unknown" for a value outside the table (a cast from a bad
// integer, e.g. through the C API), so an error message can still be built.
template <NamedEnum E>
constexpr std::string_view enum_name(E value) noexcept {
  for (const auto& row : EnumNames<E>::table) {
    if (row.value == value) return row.name;
  }
  return "unknown";
}

template <NamedEnum E>
constexpr std::optional<E> parse_enum(std::string_view text) noexcept {
  for (const auto& row : EnumNames<E>::table) {
    if (row.name == text) return row.value;
  }
  return std::nullopt;
}

template <NamedEnum E>
constexpr bool is_canonical_row(std::size_t i) noexcept {
  for (std::size_t j = 0; j < i; ++j) {
    if (EnumNames<E>::table[j].value == EnumNames<E>::table[i].value) return false;
  }
  return true;
}

// Every value of the enum once, in table order.
template <NamedEnum E>
std::vector<E> enum_values() {
  std::vector<E> values;
  for (std::size_t i = 0; i < EnumNames<E>::table.size(); ++i) {
    if (is_canonical_row<E>(i)) values.push_back(EnumNames<E>::table[i].value);
  }
  return values;
}

// "a, b, c": the canonical names, for "expected one of ..." messages.
template <NamedEnum E>
std::string enum_choices(std::string_view separator = ", ") {
  std::string out;
  for (std::size_t i = 0; i < EnumNames<E>::table.size(); ++i) {
    if (!is_canonical_row<E>(i)) continue;
    if (!out.empty()) out += separator;
    out += EnumNames<E>::table[i].name;
  }
  return out;
}

}  // namespace frugal

#pragma once

// Boost.Asio for the bootstrap store. Boost 1.74's awaitable.hpp uses std::exchange without
// including <utility>, which breaks under C++20 unless it comes first.
#include <utility>
// (separate block: keeps clang-format from sorting <utility> after Boost)
#include <boost/asio.hpp>

#pragma once

// Crash-safe file replacement: write a temporary file in the target's directory, fsync it,
// rename it over the target, fsync the directory. A reader sees either the old file or the
// complete new one, never a torn write, even across a power cut.

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

namespace frugal::train {

// Throws frugal::Error(InvalidArgument) naming the path and the system error on failure;
// the temporary file is removed then. `fault_point` names this write's crash point for the
// crash-consistency test (fault_injection.hpp); empty: none.
void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes,
                           std::string_view fault_point = {});

// Reads a whole file; throws frugal::Error(InvalidArgument) naming the path if it cannot.
std::vector<std::byte> read_file(const std::filesystem::path& path);

}  // namespace frugal::train

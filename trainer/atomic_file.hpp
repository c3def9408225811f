#pragma once

// Crash-safe file replacement: write a temporary file in the target's directory, fsync it,
// rename it over the target, fsync the directory. A reader sees either the old file or the
// complete new one, never a torn write, even across a power cut.

#include <cstddef>
#include <filesystem>
#include <span>
#include <vector>

namespace frugal::train {

// Throws frugal::Error(InvalidArgument) naming the path and the system error on failure;
// the temporary file is removed then.
void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes);

// Reads a whole file; throws frugal::Error(InvalidArgument) naming the path if it cannot.
std::vector<std::byte> read_file(const std::filesystem::path& path);

}  // namespace frugal::train

#pragma once

// frugal-model's subcommands. Each takes main's argc/argv (argv[1] is its name), prints to
// stdout and returns the exit status; bad input throws frugal::bench::UsageError or
// frugal::Error(InvalidArgument) naming the option or file.

#include <string>

namespace frugal::model {

int calibrate_command(int argc, char** argv);
int compare_command(int argc, char** argv);
int project_command(int argc, char** argv);

// "1.23 MB": byte counts in the tables.
std::string megabytes(double bytes);

}  // namespace frugal::model

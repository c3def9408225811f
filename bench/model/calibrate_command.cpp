// frugal-model calibrate: kernel speeds and transport constants into a calibration file.

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "calibration.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "measure.hpp"
#include "measured_rows.hpp"
#include "options.hpp"
#include "transport_fit.hpp"

namespace frugal::model {

using bench::UsageError;

int calibrate_command(int argc, char** argv) {
  const Args args =
      parse_args(argc, argv, "calibrate", {"--transport", "--out", "--elements", "--repeats"}, {});
  const std::vector<std::string> sizes =
      split(args.get("--elements", "262144,25600000"), "--elements");
  if (sizes.size() != 2) throw UsageError("--elements: give two sizes, SMALL,LARGE");
  if (!args.positional.empty()) {
    throw UsageError("calibrate takes no argument '" + args.positional.front() + "'");
  }
  const std::string out_path = args.need("--out", "calibrate");
  const std::vector<MeasuredRow> rows = load_rows(args.need("--transport", "calibrate"));
  const auto small = static_cast<std::size_t>(parse_count(sizes[0], "--elements", 4096));
  const auto large = static_cast<std::size_t>(parse_count(sizes[1], "--elements", 4096));
  if (small > large) throw UsageError("--elements: SMALL above LARGE");
  const int repeats = static_cast<int>(parse_count(args.get("--repeats", "9"), "--repeats", 1));
  Calibration c = measure_kernels(small, large, repeats);
  fit_transport(c, rows);
  std::ofstream out(out_path);
  if (!out) throw UsageError("--out: cannot write '" + out_path + "'");
  write_calibration(out, c);
  out.close();
  if (!out) throw UsageError("--out: writing '" + out_path + "' failed");
  write_calibration(std::cout, c);
  return 0;
}

std::string megabytes(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g MB", bytes / 1e6);
  return text;
}

}  // namespace frugal::model

// --sync async-ps, a server rank: its shard of the parameters (frugal::PsServer) until every
// worker has finished, then its account on one line.
#include <cstdio>
#include <sstream>

#include "training_run.hpp"

namespace frugal::train {

RunResult serve_parameters(Communicator& comm, const Dataset& train, const TrainOptions& options,
                           std::ostream& out) {
  PsServer server(comm, parameter_count(options, train), ps_options(options));
  ServerReport report = server.serve();
  std::ostringstream line;
  const double applied = report.applied > 0 ? static_cast<double>(report.applied) : 1.0;
  line << "parameter server rank " << comm.rank() << " (shard " << report.server << ", "
       << server.range().second - server.range().first << " parameters): applied " << report.applied
       << " updates (";
  for (std::size_t w = 0; w < report.applied_per_worker.size(); ++w) {
    line << (w > 0 ? " " : "") << report.applied_per_worker[w];
  }
  line << " per worker), staleness max " << report.max_staleness << " mean "
       << report.staleness_sum / applied << ", update lag max " << report.max_update_lag << " mean "
       << report.update_lag_sum / applied << ", " << report.bytes_received << " bytes received, "
       << report.bytes_sent << " sent";
  if (!report.failed_workers.empty()) {
    line << "; workers lost:";
    for (const int w : report.failed_workers) line << ' ' << w;
  }
  out << line.str() << '\n' << std::flush;
  RunResult result;
  result.server = std::move(report);
  return result;
}

}  // namespace frugal::train

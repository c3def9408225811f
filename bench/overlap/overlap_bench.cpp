// frugal-overlap-bench: how much a rank's computation slows down while an allreduce runs beside
// it on the communicator's progress thread, as in training (backward computes while gradients
// are reduced). Each step times a fixed amount of compute alone, then the same compute with an
// allreduce outstanding (allreduce_async), then the wait for the allreduce, and counts the CPU
// the process used in each phase. With more ranks than cores a transport whose waits poll takes
// CPU from the compute; one whose waits sleep does not. --straggler F adds a phase in which rank 0
// computes F times the work before the allreduce while the others already wait in it: waits that
// poll take the CPU the straggler needs. Only rank 0 prints.
//
//   mpirun -np 4 --oversubscribe frugal-overlap-bench [--transport mpi|ucx] [--method dense|onebit]
//          [--floats N] [--work M] [--steps S] [--straggler F]
#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/collectives/async.hpp"
#include "frugal/mpi.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx_mpi.hpp"
#endif

namespace {

using Seconds = std::chrono::duration<double>;
using SteadyClock = std::chrono::steady_clock;

struct Options {
  std::string transport = "ucx";
  std::string method = "dense";
  std::size_t floats = 25'600'000;  // a ResNet-50 gradient
  long work = 400;                  // millions of compute iterations per step
  int steps = 5;
  long straggler = 1;  // > 1: a third phase in which rank 0 computes this many times the work
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + ": missing value");
    const std::string value = argv[++i];
    auto number = [&](long min) {
      std::size_t used = 0;
      long n = 0;
      try {
        n = std::stol(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != value.size() || n < min) {
        throw std::invalid_argument(std::string(flag) + ": expected a whole number >= " +
                                    std::to_string(min) + ", got '" + value + "'");
      }
      return n;
    };
    if (flag == "--transport" && (value == "mpi" || value == "ucx")) {
      o.transport = value;
    } else if (flag == "--method" && (value == "dense" || value == "onebit")) {
      o.method = value;
    } else if (flag == "--floats") {
      o.floats = static_cast<std::size_t>(number(1));
    } else if (flag == "--work") {
      o.work = number(1);
    } else if (flag == "--straggler") {
      o.straggler = number(1);
    } else if (flag == "--steps") {
      o.steps = static_cast<int>(number(1));
    } else {
      throw std::invalid_argument("unknown option or bad value: " + std::string(flag) + " " +
                                  value);
    }
  }
  return o;
}

// Compute-bound work of a fixed size (independent multiply-add chains on registers), standing in
// for backward. Returns a value so that it cannot be optimised away.
float compute(long millions) {
  float a = 1.0f, b = 2.0f, c = 3.0f, d = 4.0f;
  for (long i = 0; i < millions * 1'000'000 / 4; ++i) {
    a = a * 0.999999f + 1e-6f;
    b = b * 0.999999f + 1e-6f;
    c = c * 0.999999f + 1e-6f;
    d = d * 0.999999f + 1e-6f;
  }
  return a + b + c + d;
}

double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return s(usage.ru_utime) + s(usage.ru_stime);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double max_over_ranks(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

double sum_over_ranks(double x) {
  double s = 0;
  MPI_Allreduce(&x, &s, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return s;
}

int run(const Options& o, int rank, int ranks) {
  std::unique_ptr<frugal::Communicator> comm;
  if (o.transport == "ucx") {
#ifdef FRUGAL_HAVE_UCX
    comm = frugal::make_ucx_communicator(MPI_COMM_WORLD);
#else
    throw std::invalid_argument("--transport ucx: built without UCX");
#endif
  } else {
    comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
  }
  std::vector<float> data(o.floats);
  frugal::AllreduceOptions options;
  frugal::AllreduceState state;
  if (o.method == "onebit") {
    options.compression.method = frugal::compression::Method::OneBit;
    options.state = &state;
  } else {
    options.algorithm = frugal::AllreduceAlgorithm::Ring;
  }
  std::vector<double> alone, beside, wait, step, cpu_alone, cpu_beside, late, late_step, late_cpu;
  volatile float sink = 0;
  for (int s = -1; s < o.steps; ++s) {  // step -1 warms up
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>((i + rank) % 7);
    MPI_Barrier(MPI_COMM_WORLD);
    double cpu = process_cpu_seconds();
    auto t0 = SteadyClock::now();
    sink = sink + compute(o.work);
    const double a = Seconds(SteadyClock::now() - t0).count();
    const double ca = process_cpu_seconds() - cpu;
    MPI_Barrier(MPI_COMM_WORLD);
    cpu = process_cpu_seconds();
    t0 = SteadyClock::now();
    frugal::AllreduceHandle handle = frugal::allreduce_async(*comm, data, options);
    sink = sink + compute(o.work);
    const auto t1 = SteadyClock::now();
    handle.wait();
    const auto t2 = SteadyClock::now();
    const double cb = process_cpu_seconds() - cpu;
    const double b = Seconds(t1 - t0).count(), w = Seconds(t2 - t1).count(),
                 st = Seconds(t2 - t0).count();
    // Straggler: rank 0 computes longer, then every rank reduces (as the last gradient bucket
    // after backward). The others wait inside the transport meanwhile, on the cores rank 0
    // needs.
    double l = 0, ls = 0, lc = 0;
    if (o.straggler > 1) {
      MPI_Barrier(MPI_COMM_WORLD);
      cpu = process_cpu_seconds();
      t0 = SteadyClock::now();
      sink = sink + compute(rank == 0 ? o.work * o.straggler : o.work);
      l = Seconds(SteadyClock::now() - t0).count();
      frugal::allreduce_async(*comm, data, options).wait();
      ls = Seconds(SteadyClock::now() - t0).count();
      lc = process_cpu_seconds() - cpu;
    }
    if (s < 0) continue;
    late.push_back(l);
    late_step.push_back(ls);
    late_cpu.push_back(lc);
    alone.push_back(a);
    beside.push_back(b);
    wait.push_back(w);
    step.push_back(st);
    cpu_alone.push_back(ca);
    cpu_beside.push_back(cb);
  }
  const double m_alone = max_over_ranks(median(alone));
  const double m_beside = max_over_ranks(median(beside));
  const double m_wait = max_over_ranks(median(wait));
  const double m_step = max_over_ranks(median(step));
  const double c_alone = sum_over_ranks(median(cpu_alone));
  const double c_beside = sum_over_ranks(median(cpu_beside));
  const double straggler_compute = median(late);  // rank 0's
  const double straggler_step = max_over_ranks(median(late_step));
  // What the other ranks spent while the straggler computed: their own compute and the wait.
  const double waiters_cpu = sum_over_ranks(rank == 0 ? 0.0 : median(late_cpu));
  if (rank == 0) {
    const char* wait_mode = std::getenv("FRUGAL_UCX_WAIT");
    std::printf(
        "# %d ranks, %s over %s%s, %zu floats, compute %ld M iterations; medians over %d steps "
        "(max over ranks; CPU summed over ranks)\n",
        ranks, o.method.c_str(), o.transport.c_str(),
        o.transport == "ucx"
            ? (std::string(" (FRUGAL_UCX_WAIT=") + (wait_mode != nullptr ? wait_mode : "") + ")")
                  .c_str()
            : "",
        o.floats, o.work, o.steps);
    std::printf(
        "compute_alone_s %.3f  compute_beside_s %.3f (x%.2f)  wait_after_s %.3f  step_s %.3f"
        "  cpu_alone_s %.2f  cpu_step_s %.2f\n",
        m_alone, m_beside, m_beside / m_alone, m_wait, m_step, c_alone, c_beside);
    if (o.straggler > 1) {
      std::printf(
          "straggler (rank 0 computes x%ld): its compute_s %.3f (x%.2f of compute_alone) "
          " step_s %.3f  cpu of the other ranks %.2f s (their compute %.2f s)\n",
          o.straggler, straggler_compute,
          straggler_compute / (m_alone * static_cast<double>(o.straggler)), straggler_step,
          waiters_cpu, c_alone * (ranks - 1) / ranks);
    }
  }
  return sink == 12345.0f ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int code = 0;
  try {
    code = run(parse(argc, argv), rank, ranks);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "frugal-overlap-bench: rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Finalize();
  return code;
}

// A minimal data-parallel LibTorch training loop with frugal, outside trainer/: every rank
// trains the same model on its own data and averages gradients through frugal's C++ API before
// each optimizer step (the lines marked "frugal"). Run with
//   mpirun -np 2 libtorch-train-example [--method dense|topk|qsgd|...] [--steps N]
// The end of main() checks what data parallelism promises (identical weights on every rank) and
// that the model learned; the exit code says whether both hold.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/buckets.hpp"      // frugal
#include "frugal/collectives/collectives.hpp"  // allgather, for the check at the end
#include "frugal/mpi.hpp"                      // frugal

int train(frugal::compression::Method compression, const std::string& method, int steps);

int main(int argc, char** argv) {
  std::string method = "dense";
  int steps = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help") {
      std::printf("usage: %s [--method dense|topk|qsgd|...] [--steps N]   (under mpirun)\n",
                  argv[0]);
      return 0;
    } else if (arg == "--method" && i + 1 < argc) {
      method = argv[++i];
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
      if (steps < 2) {
        std::fprintf(stderr, "libtorch-train-example: --steps must be an integer >= 2\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "libtorch-train-example: unknown argument '%s' (see --help)\n",
                   arg.c_str());
      return 2;
    }
  }
  using frugal::compression::Method;
  // "dense" is this program's word for Method::None; every other name is the library's.
  const std::optional<Method> compression =
      method == "dense" ? Method::None : frugal::parse_enum<Method>(method);
  if (!compression || (*compression == Method::None && method != "dense")) {
    std::fprintf(stderr, "libtorch-train-example: unknown method '%s' (dense, %s)\n",
                 method.c_str(), frugal::enum_choices<Method>().c_str());
    return 2;
  }
  torch::set_num_threads(1);
  try {
    return train(*compression, method, steps);
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "libtorch-train-example: %s\n", e.what());
    return 1;
  }
}

int train(frugal::compression::Method compression, const std::string& method, int steps) {
  auto comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);  // frugal
  torch::manual_seed(0);  // the same initial weights on every rank
  torch::nn::Sequential model(torch::nn::Linear(16, 32), torch::nn::ReLU(),
                              torch::nn::Linear(32, 1));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  std::vector<torch::Tensor> params = model->parameters();

  frugal::BucketOptions bucket_options;                                // frugal
  bucket_options.allreduce.op = frugal::ReduceOp::Average;             // frugal
  bucket_options.allreduce.compression.method = compression;           // frugal
  bucket_options.allreduce.compression.density = 0.1;                  // frugal (top-k keeps 10%)
  frugal::GradientBuckets buckets(*comm, bucket_options);              // frugal
  std::vector<std::size_t> ids(params.size());                         // frugal
  for (std::size_t i = params.size(); i-- > 0;) {                      // frugal: in backward order
    ids[i] = buckets.add("p" + std::to_string(i), params[i].numel());  // frugal
  }

  // Each rank's own shard of a regression problem y = x . w_true.
  torch::manual_seed(1000 + comm->rank());
  const torch::Tensor w_true = torch::linspace(-1, 1, 16).unsqueeze(1);
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < steps; ++step) {
    const torch::Tensor x = torch::randn({64, 16});
    const torch::Tensor y = torch::mm(x, w_true);
    optimizer.zero_grad();
    torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    for (std::size_t i = params.size(); i-- > 0;) {  // frugal: hand each gradient over
      torch::Tensor g = params[i].grad();
      buckets.mark_ready(ids[i], {g.data_ptr<float>(), static_cast<std::size_t>(g.numel())});
    }
    buckets.finish();  // frugal: averaged gradients are back in params[i].grad()
    optimizer.step();
    (step == 0 ? first_loss : last_loss) = loss.item<double>();
  }

  // Check: every rank holds bit-identical weights, and the loss went down.
  std::vector<float> mine;
  for (const torch::Tensor& p : params) {
    const torch::Tensor flat = p.detach().contiguous().view(-1);
    mine.insert(mine.end(), flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
  }
  std::vector<float> all(mine.size() * static_cast<std::size_t>(comm->size()));
  frugal::allgather(*comm, std::as_bytes(std::span<const float>(mine)),
                    std::as_writable_bytes(std::span<float>(all)));
  bool identical = true;
  for (int r = 0; r < comm->size(); ++r) {
    identical = identical && std::memcmp(all.data() + r * mine.size(), mine.data(),
                                         mine.size() * sizeof(float)) == 0;
  }
  const bool learned = last_loss < 0.5 * first_loss;
  std::printf("rank %d method %s: loss %.4f -> %.4f, weights identical on all %d ranks: %s\n",
              comm->rank(), method.c_str(), first_loss, last_loss, comm->size(),
              identical ? "yes" : "NO");
  return identical && learned ? 0 : 1;
}

// Distributed validation: each rank scores its shard of the validation set, the sums are
// allreduced.
#include "models/resnet.hpp"
#include "training_run.hpp"

namespace frugal::train {

Sums TrainingRun::validate(std::int64_t batch) {
  const TrainOptions& o = options_;
  model_->eval();
  torch::NoGradGuard no_grad;
  const DistributedSampler sampler(val_.size(), rank_, ranks_, o.seed, false, o.limit_val);
  LoaderOptions lo;
  lo.batch_size = static_cast<std::size_t>(batch);
  lo.threads = o.loader_threads;
  lo.drop_last = false;
  Loader loader(val_, sampler.indices(0), o.seed, lo);
  Sums sums;
  while (auto b = loader.next()) {
    const torch::Tensor logits = forward(*model_, b->images);
    const double loss = torch::nn::functional::cross_entropy(
                            logits, b->labels,
                            torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                            .item<double>();
    const auto [top1, top5] = hits(logits, b->labels);
    sums.add(loss, top1, top5, static_cast<double>(b->labels.size(0)));
  }
  return sums.global(comm_);
}

}  // namespace frugal::train

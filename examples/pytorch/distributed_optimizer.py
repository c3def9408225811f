#!/usr/bin/python3
"""Fashion-MNIST on a small ResNet with frugal.torch.DistributedOptimizer:
no torch.distributed; 1-bit with error feedback by default (--method: any
of frugal's). Runs under mpirun, torchrun or scripts/launch.

  mpirun -np 2 /usr/bin/python3 distributed_optimizer.py
"""
import argparse

import torch

import fashion
import frugal
import frugal.torch

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--method", default="onebit")
p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=0.02)
args = p.parse_args()
torch.set_num_threads(1)

frugal.init()  # mpirun, torchrun or scripts/launch: it finds out which
model = fashion.make_model(seed=frugal.rank())  # deliberately different
frugal.torch.broadcast_parameters(model.state_dict(), root_rank=0)
opt = frugal.torch.DistributedOptimizer(
    torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
    model.named_parameters(), frugal.Compression.parse(args.method))

data = fashion.batches(*fashion.load("train"), 32, frugal.rank(),
                       frugal.size())
losses = []
for step in range(args.steps):
    images, labels = next(data)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()  # buckets start averaging while backward runs
    opt.step()  # waits for the averages, then steps
    losses.append(loss.item())

accuracy = fashion.accuracy(model, *fashion.load("test"))
first, last = (sum(x) / len(x) for x in (losses[:10], losses[-10:]))
print("rank %d: weights %s, loss %.4f -> %.4f, test accuracy %.2f%%"
      % (frugal.rank(), fashion.weights_hash(model), first, last, accuracy))
frugal.shutdown()

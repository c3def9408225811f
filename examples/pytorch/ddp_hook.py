#!/usr/bin/python3
"""DDP on Fashion-MNIST with frugal averaging the gradients: a small ResNet,
top-k 1% with error feedback by default (--method: any of frugal's, e.g.
onebit, qsgd:bits=4, none). Each rank checkpoints its own residuals.

  /usr/bin/python3 -m torch.distributed.run --nproc_per_node 2 ddp_hook.py
"""
import argparse

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import fashion
import frugal
import frugal.torch

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--method", default="topk")
p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=0.02)
p.add_argument("--save", default="", help="checkpoint prefix")
args = p.parse_args()
torch.set_num_threads(1)

dist.init_process_group("gloo")  # DDP's process group (torchrun's env)
frugal.init()  # frugal joins the same ranks
model = DDP(fashion.make_model())
hook = frugal.torch.CommHookState(frugal.Compression.parse(args.method))
model.register_comm_hook(hook, frugal.torch.comm_hook)
opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

rank, world = dist.get_rank(), dist.get_world_size()
data = fashion.batches(*fashion.load("train"), 32, rank, world)
losses = []
for step in range(args.steps):
    images, labels = next(data)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()  # DDP calls frugal's hook for each gradient bucket
    opt.step()
    losses.append(loss.item())

if args.save:  # each rank saves its own error-feedback residuals
    torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(),
                "hook": hook.state_dict()}, "%s%d.pt" % (args.save, rank))
accuracy = fashion.accuracy(model.module, *fashion.load("test"))
first, last = (sum(x) / len(x) for x in (losses[:10], losses[-10:]))
print("rank %d: weights %s, loss %.4f -> %.4f, test accuracy %.2f%%"
      % (rank, fashion.weights_hash(model.module), first, last, accuracy))
frugal.shutdown()

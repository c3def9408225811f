#!/usr/bin/python3
"""One rank of a tests/torch scenario; run.py launches it and checks what
every rank wrote to OUT/rank<R>.json.

  worker.py SCENARIO OUT [--method M] [--phase P] [--steps N] [--rank R]

Scenarios: hook-dense, hook-method, hook-checkpoint, hook-bad, hook-kill,
opt-dense, opt-method, opt-broadcast, opt-bad, opt-kill, powersgd-dense,
powersgd-method, powersgd-checkpoint, powersgd-bad-one.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "pytorch"))
import fashion  # noqa: E402
import frugal  # noqa: E402
import frugal.torch as ft  # noqa: E402

BATCH = 16
# DDP's first bucket holds 1 MiB, more than the whole model: several small
# buckets instead (DDP reads this when it is constructed).
dist._DEFAULT_FIRST_BUCKET_BYTES = 50 * 1024
Result = Dict[str, Any]


def compression(method: str) -> frugal.Compression:
    return frugal.Compression.parse(method)


def init_torch() -> None:
    """torch.distributed from torchrun's variables or scripts/launch's."""
    if "RANK" not in os.environ:
        host, port = os.environ["FRUGAL_ADDR"].rsplit(":", 1)
        os.environ.update(RANK=os.environ["FRUGAL_RANK"],
                          WORLD_SIZE=os.environ["FRUGAL_WORLD_SIZE"],
                          MASTER_ADDR=host, MASTER_PORT=str(int(port) + 1))
    dist.init_process_group("gloo")


def rel_diff(a: nn.Module, b: nn.Module) -> float:
    """Largest ||a - b|| / ||b|| over the parameters."""
    return max(float((p - q).norm() / q.norm())
               for p, q in zip(a.parameters(), b.parameters()))


def train(module: nn.Module, opt: torch.optim.Optimizer, steps: int,
          skip: int = 0, on_step: Callable[[int], None] = lambda i: None
          ) -> List[float]:
    """steps SGD steps on this rank's Fashion-MNIST batches (after
    skipping `skip` steps' worth); the losses."""
    x, y = DATA
    data = fashion.batches(x, y, BATCH, frugal.rank(), frugal.size())
    for _ in range(skip):
        next(data)
    losses = []
    for i in range(steps):
        on_step(skip + i)
        images, labels = next(data)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(module(images), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


LR = [0.05]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR[0], momentum=0.9)


def hook_ddp(method: str, **kwargs: Any) -> Any:
    model = fashion.make_model()
    ddp = DDP(model, bucket_cap_mb=0.05)
    state = ft.CommHookState(compression=compression(method), **kwargs)
    ddp.register_comm_hook(state, ft.comm_hook)
    return ddp, state


def last_step_bytes(module: nn.Module, opt: torch.optim.Optimizer,
                    steps: int, counter: Callable[[], int]
                    ) -> Tuple[List[float], int]:
    """train(), and what counter() grew by in the last step."""
    before = [0]

    def mark(i: int) -> None:
        if i == steps - 1:
            before[0] = counter()
    losses = train(module, opt, steps, on_step=mark)
    return losses, counter() - before[0]


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hook_counter(state: Any) -> Callable[[], int]:
    def count() -> int:
        state.wait()
        return state.wire_bytes_sent
    return count


def hook_dense(args: argparse.Namespace) -> Result:
    ddp, state = hook_ddp("none")
    reference = DDP(fashion.make_model(), bucket_cap_mb=0.05)
    losses, sent = last_step_bytes(ddp, sgd(ddp), args.steps,
                                   hook_counter(state))
    train(reference, sgd(reference), args.steps)
    return {"rel_diff": rel_diff(ddp.module, reference.module),
            "losses": losses, "buckets": state.bucket_count,
            "last_step_bytes": sent, "numel": numel(ddp.module),
            "world": frugal.size()}


def hook_vectors(args: argparse.Namespace) -> Result:
    """One step with dense_vectors on and off: each parameter's reduced
    gradient against the exact average of every rank's (the largest
    error relative to the largest element), for vectors and matrices."""
    world = frugal.size()
    images, labels = next(fashion.batches(*DATA, BATCH, frugal.rank(),
                                          world))
    local = fashion.make_model()
    nn.functional.cross_entropy(local(images), labels).backward()
    grads = frugal.allgather_object([p.grad.numpy()
                                     for p in local.parameters()])
    exact = [sum(torch.from_numpy(g[i]) for g in grads) / world
             for i in range(len(grads[0]))]
    out: Result = {}
    for dense_vectors in (True, False):
        model = fashion.make_model()
        ddp = DDP(model, bucket_cap_mb=0.05)
        state = ft.CommHookState(compression=compression(args.method),
                                 dense_vectors=dense_vectors)
        ddp.register_comm_hook(state, ft.comm_hook)
        nn.functional.cross_entropy(ddp(images), labels).backward()
        errors: Dict[str, float] = {"vectors": 0.0, "matrices": 0.0}
        for p, e in zip(model.parameters(), exact):
            kind = "vectors" if p.dim() <= 1 else "matrices"
            error = float((p.grad - e).abs().max() / e.abs().max())
            errors[kind] = max(errors[kind], error)
        out["dense_vectors=%s" % dense_vectors] = errors
    # Top-k over whole buckets (dense_vectors off): one selection over a
    # bucket leaves parameters of small gradients out entirely; per
    # tensor, the hook's segments give every parameter its share.
    for scope in ("global", "per_tensor"):
        model = fashion.make_model()
        ddp = DDP(model, bucket_cap_mb=0.05)
        state = ft.CommHookState(
            compression=frugal.Compression.topk(0.01, scope=scope),
            dense_vectors=False)
        ddp.register_comm_hook(state, ft.comm_hook)
        nn.functional.cross_entropy(ddp(images), labels).backward()
        out["topk_" + scope + "_params_left_out"] = sum(
            int(not bool((p.grad != 0).any())) for p in model.parameters())
    return out


def held_out_loss(model: nn.Module) -> float:
    """Loss on the first 1000 test images: less noisy than a batch's."""
    x, y = TEST
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x[:1000]), y[:1000]).item()


def hook_method(args: argparse.Namespace) -> Result:
    ddp, state = hook_ddp(args.method)
    before = held_out_loss(ddp.module)
    losses, sent = last_step_bytes(ddp, sgd(ddp), args.steps,
                                   hook_counter(state))
    return {"losses": losses, "hash": fashion.weights_hash(ddp.module),
            "buckets": state.bucket_count, "before": before,
            "after": held_out_loss(ddp.module), "last_step_bytes": sent,
            "numel": numel(ddp.module), "method": args.method}


def hook_checkpoint(args: argparse.Namespace) -> Result:
    """phase full: 2 x steps, saving after `steps`; resume: load, then
    `steps` more; fresh: the same without the hook's residuals;
    other-rank: loading the other rank's residuals must fail."""
    if args.scenario == "powersgd-checkpoint":
        ddp, state = powersgd_ddp(rank=2, start_iter=3)
    else:
        ddp, state = hook_ddp(args.method)
    opt = sgd(ddp)
    path = os.path.join(args.out, "ckpt%d.pt" % frugal.rank())
    out: Result = {}

    def save(i: int) -> None:
        if i == args.steps:
            torch.save({"model": ddp.module.state_dict(),
                        "opt": opt.state_dict(),
                        "hook": state.state_dict(),
                        "all": state.state_dict(all_ranks=True)}, path)
            out["residuals"] = {
                k: [hashlib.sha256(v).hexdigest(), len(v),
                    len(v) - v.count(0)]
                for k, v in state.state_dict()["states"].items()}

    if args.phase == "full":
        out["losses"] = train(ddp, opt, 2 * args.steps, on_step=save)
        return out
    ckpt = torch.load(path)
    ddp.module.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    hook = ckpt["hook"]
    if args.phase == "other-rank":
        other = ckpt["all"]["ranks"][1 - frugal.rank()]
        try:
            state.load_state_dict(dict(other, format=hook["format"]))
        except frugal.InvalidArgumentError as e:
            return {"error": str(e), "type": type(e).__name__}
        return {"error": None}
    if args.phase == "resume":
        state.load_state_dict(hook)
    out["losses"] = train(ddp, opt, args.steps, skip=args.steps)
    return out


def powersgd_ddp(**kwargs: Any) -> Any:
    model = fashion.make_model()
    ddp = DDP(model, bucket_cap_mb=0.05)
    state = ft.PowerSGDHookState(**kwargs)
    ddp.register_comm_hook(state, ft.powersgd_hook)
    return ddp, state


def powersgd_dense(args: argparse.Namespace) -> Result:
    """start_iter beyond the steps run: DDP's own dense average."""
    ddp, state = powersgd_ddp(rank=1, start_iter=args.steps + 5)
    reference = DDP(fashion.make_model(), bucket_cap_mb=0.05)
    losses = train(ddp, sgd(ddp), args.steps)
    train(reference, sgd(reference), args.steps)
    state.wait()
    return {"rel_diff": rel_diff(ddp.module, reference.module),
            "losses": losses, "buckets": state.bucket_count,
            "compressed": state.compressed_tensors}


def powersgd_method(args: argparse.Namespace) -> Result:
    """PowerSGD of rank --rank from step 2: identical weights, learning,
    fewer bytes than dense."""
    ddp, state = powersgd_ddp(rank=args.rank, start_iter=2)
    before = held_out_loss(ddp.module)
    losses, sent = last_step_bytes(ddp, sgd(ddp), args.steps,
                                   hook_counter(state))
    matrices = sum(frugal.powersgd_compresses(p.shape, rank=args.rank)
                   for p in ddp.module.parameters())
    return {"losses": losses, "hash": fashion.weights_hash(ddp.module),
            "buckets": state.bucket_count, "before": before,
            "after": held_out_loss(ddp.module), "last_step_bytes": sent,
            "numel": numel(ddp.module), "method": "powersgd",
            "compressed": state.compressed_tensors, "matrices": matrices,
            "steps": args.steps}


def powersgd_bad_one(args: argparse.Namespace) -> Result:
    """Rank 1's model is float64: it raises naming the dtype, rank 0
    raises MismatchError within seconds, not after the timeout."""
    model = fashion.make_model()
    if frugal.rank() == 1:
        model = model.double()
    ddp = DDP(model, bucket_cap_mb=0.05)
    state = ft.PowerSGDHookState(start_iter=0)
    ddp.register_comm_hook(state, ft.powersgd_hook)
    images, labels = next(fashion.batches(*DATA, BATCH, 0, 1))
    images = images.double() if frugal.rank() == 1 else images
    started = time.monotonic()
    try:
        nn.functional.cross_entropy(ddp(images), labels).backward()
    except Exception as e:
        state.wait()
        cause = state.error if frugal.rank() == 0 else e
        return {"raised": "%s: %s" % (type(e).__name__, e),
                "cause": type(cause).__name__,
                "seconds": time.monotonic() - started}
    return {"raised": None}


def opt_wrap(model: nn.Module, method: str, **kwargs: Any) -> Any:
    kwargs.setdefault("bucket_mb", 0.05)
    return ft.DistributedOptimizer(sgd(model), model.named_parameters(),
                                   compression=compression(method),
                                   **kwargs)


def opt_dense(args: argparse.Namespace) -> Result:
    """Against one process that computes every rank's batch: the mean
    gradient of the combined batch (summed shard by shard)."""
    model, serial = fashion.make_model(), fashion.make_model()
    opt, serial_opt = opt_wrap(model, "none"), sgd(serial)
    x, y = DATA
    world, rank = frugal.size(), frugal.rank()
    sent_before = last = 0
    for step, (images, labels) in enumerate(
            fashion.batches(x, y, BATCH * world, 0, 1)):
        if step == args.steps:
            break
        shards = [slice(r * BATCH, (r + 1) * BATCH) for r in range(world)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(images[shards[rank]]),
                                           labels[shards[rank]])
        loss.backward()
        opt.step()
        serial_opt.zero_grad()
        for sl in shards:
            loss = nn.functional.cross_entropy(serial(images[sl]),
                                               labels[sl])
            (loss / world).backward()
        serial_opt.step()
        last = opt.wire_bytes_sent - sent_before
        sent_before = opt.wire_bytes_sent
    return {"rel_diff": rel_diff(model, serial),
            "buckets": opt._frugal.bucket_count, "last_step_bytes": last,
            "numel": numel(model), "world": world}


def opt_method(args: argparse.Namespace) -> Result:
    model = fashion.make_model()
    before = held_out_loss(model)
    opt = opt_wrap(model, args.method)
    losses, sent = last_step_bytes(model, opt, args.steps,
                                   lambda: opt.wire_bytes_sent)
    return {"losses": losses, "hash": fashion.weights_hash(model),
            "before": before, "after": held_out_loss(model),
            "last_step_bytes": sent, "numel": numel(model),
            "method": args.method}


def opt_broadcast(args: argparse.Namespace) -> Result:
    """Different weights everywhere; momentum and a learning rate that
    only rank 0 has; after the broadcasts, one DistributedOptimizer step
    must keep the ranks identical."""
    model = fashion.make_model(seed=1 + frugal.rank())
    opt = sgd(model)
    before = fashion.weights_hash(model)
    if frugal.rank() == 0:  # local steps: no collective
        train(model, opt, 2)
        opt.param_groups[0]["lr"] = 0.01
    ft.broadcast_parameters(model.state_dict(), root_rank=0)
    ft.broadcast_optimizer_state(opt, root_rank=0)
    momentum = [opt.state[p]["momentum_buffer"].sum().item()
                for p in model.parameters() if p in opt.state]
    after = fashion.weights_hash(model)
    wrapped = ft.DistributedOptimizer(opt, model.named_parameters(),
                                      compression="topk", bucket_mb=0.05)
    train(model, wrapped, 2)
    return {"before": before, "after": after, "lr": opt.param_groups[0]["lr"],
            "momentum": momentum, "hash": fashion.weights_hash(model)}


def bad(args: argparse.Namespace) -> Result:
    """Each case must raise on every rank: what it raised."""
    cases = {
        "unknown-method": lambda: compression("nosuchmethod"),
        "bad-parameter": lambda: frugal.Compression.topk(density=1.5),
        "hook-unknown-method": lambda: ft.CommHookState("nosuchmethod"),
        "hook-bad-decay": lambda: ft.CommHookState("onebit", decay=-1.0),
        "opt-unknown-method": lambda: ft.DistributedOptimizer(
            sgd(fashion.make_model()), compression="nosuchmethod"),
        "opt-float64": lambda: opt_wrap(fashion.make_model().double(),
                                        "onebit"),
        "opt-bad-bucket": lambda: opt_wrap(fashion.make_model(), "none",
                                           bucket_mb=-1),
        "broadcast-not-tensors": lambda: ft.broadcast_parameters(
            [1, 2, 3]),
    }
    if "RANK" in os.environ:  # DDP: torchrun
        def float64_hook() -> None:
            ddp = DDP(fashion.make_model().double(), bucket_cap_mb=0.05)
            state = ft.CommHookState("topk")
            ddp.register_comm_hook(state, ft.comm_hook)
            images, labels = next(fashion.batches(*DATA, BATCH, 0, 1))
            nn.functional.cross_entropy(ddp(images.double()),
                                        labels).backward()
        cases["hook-float64"] = float64_hook

        def float64_powersgd() -> None:
            ddp = DDP(fashion.make_model().double(), bucket_cap_mb=0.05)
            state = ft.PowerSGDHookState()
            ddp.register_comm_hook(state, ft.powersgd_hook)
            images, labels = next(fashion.batches(*DATA, BATCH, 0, 1))
            nn.functional.cross_entropy(ddp(images.double()),
                                        labels).backward()
        cases["powersgd-float64"] = float64_powersgd
        cases["powersgd-bad-rank"] = lambda: ft.PowerSGDHookState(rank=0)
        cases["powersgd-bad-rate"] = lambda: ft.PowerSGDHookState(
            min_compression_rate=0.5)
    out: Result = {}
    for name, case in cases.items():
        try:
            case()
            out[name] = None
        except Exception as e:
            out[name] = "%s: %s" % (type(e).__name__, e)
    return out


def kill(args: argparse.Namespace) -> Result:
    """Rank 1 dies before step 3; rank 0 reports what it raised, how
    long after the step began."""
    if args.scenario == "hook-kill":
        module, state = hook_ddp("onebit")
        opt = sgd(module)
    else:
        module = fashion.make_model()
        opt, state = opt_wrap(module, "onebit"), None
    started = [0.0]

    def maybe_die(i: int) -> None:
        if i == 3 and frugal.rank() == 1:
            os._exit(7)
        started[0] = time.monotonic()

    try:
        train(module, opt, 10, on_step=maybe_die)
    except Exception as e:
        cause = state.error if state is not None else e
        return {"raised": "%s: %s" % (type(e).__name__, e),
                "cause": type(cause).__name__,
                "seconds": time.monotonic() - started[0]}
    return {"raised": None}


SCENARIOS = {"hook-dense": hook_dense, "hook-method": hook_method,
             "hook-vectors": hook_vectors,
             "hook-checkpoint": hook_checkpoint, "hook-bad": bad,
             "hook-kill": kill, "opt-dense": opt_dense,
             "powersgd-dense": powersgd_dense,
             "powersgd-method": powersgd_method,
             "powersgd-checkpoint": hook_checkpoint,
             "powersgd-bad-one": powersgd_bad_one,
             "opt-method": opt_method, "opt-broadcast": opt_broadcast,
             "opt-bad": bad, "opt-kill": kill}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("out")
    p.add_argument("--method", default="none")
    p.add_argument("--phase", default="full")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rank", type=int, default=1, help="PowerSGD's r")
    args = p.parse_args()
    LR[0] = args.lr
    torch.set_num_threads(1)
    if args.scenario.startswith(("hook", "powersgd")):
        init_torch()
    frugal.init()
    try:
        result = SCENARIOS[args.scenario](args)
    except Exception:
        result = {"crashed": traceback.format_exc()}
    result["rank"] = frugal.rank()
    with open(os.path.join(args.out, "rank%d.json" % frugal.rank()),
              "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    if args.scenario.endswith("kill"):
        os._exit(0)  # no teardown: the peer is gone
    frugal.shutdown()


DATA = fashion.load("train")
TEST = fashion.load("test")

if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""One data-parallel training step, timed, for each way of averaging the
gradients: none (compute only), DDP over Gloo (fp32, fp16_compress_hook,
PowerSGD), DDP with frugal's PowerSGD hook, DDP with frugal's
communication hook, and frugal's DistributedOptimizer (each for several
compression methods).

Every rank runs this script. Launch it with torchrun, scripts/launch or
bench/cluster/run --exec (FRUGAL_RANK / FRUGAL_WORLD_SIZE / FRUGAL_ADDR:
torch.distributed then meets at FRUGAL_ADDR's host, port + 1):

  /usr/bin/python3 -m torch.distributed.run --nproc_per_node 2 \\
      bench/torch/step_bench.py --json out.jsonl --table out.md
  bench/cluster/run --np 4 --rate 1gbit --exec -- env UCX_TLS=tcp \\
      GLOO_SOCKET_IFNAME=eth0 /usr/bin/python3 bench/torch/step_bench.py ...

Each step is zero_grad, forward, backward and optimizer step (SGD), after
a barrier; a step's time is the slowest rank's, and a row reports the
median over --steps steps after --warmup. Rank 0 writes one JSON line per
configuration and a markdown table. Wire bytes are per rank per step:
"computed" ones follow from the algorithm's formula (ring allreduce sends
2(P-1)/P of the buffer per rank), "measured" ones come from frugal.
A configuration that raises is reported as failed, with the message.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import configs  # noqa: E402

DEFAULT_CONFIGS = ("compute,ddp-noop,ddp,ddp-fp16,ddp-powersgd1,ddp-powersgd4,"
                   "ddp-powersgd1-1bucket,ddp-powersgd4-1bucket,"
                   "hook-powersgd1,hook-powersgd4,"
                   "hook-none,hook-fp16,hook-onebit,hook-onebit-whole,"
                   "hook-topk,hook-qsgd,"
                   "opt-none,opt-fp16,opt-onebit,opt-topk,opt-qsgd")


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/torch/step_bench.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("linear", "cnn"), default="linear",
                   help="linear: 6 x Linear(2048, 2048), 25.2M weights; "
                        "cnn: the examples' small ResNet (Fashion-MNIST "
                        "shapes, 78k weights)")
    p.add_argument("--batch", type=int, default=4, help="samples per rank")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first (at least 2: PowerSGD starts "
                        "at step 2)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated, from: " + DEFAULT_CONFIGS)
    p.add_argument("--bucket-mb", type=float, default=25.0,
                   help="DDP bucket_cap_mb and frugal's bucket_mb")
    p.add_argument("--density", type=float, default=0.01, help="top-k")
    p.add_argument("--transport", default=None, help="frugal: ucx or mpi")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads per rank")
    p.add_argument("--nic", default="lo",
                   help="interface whose sent bytes are counted: lo (shared "
                        "by the local ranks: divided by their number) or "
                        "eth0 under bench/cluster/run (default lo)")
    p.add_argument("--json", default=None, help="JSON lines to this file")
    p.add_argument("--table", default=None, help="markdown table here")
    p.add_argument("--label", default="", help="free text in every row")
    p.add_argument("--config-timeout", type=float, default=300,
                   help="seconds a configuration may take before it is "
                        "reported as hung (default 300)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 2:
        p.error("--warmup must be at least 2")
    unknown = set(args.configs.split(",")) - set(DEFAULT_CONFIGS.split(","))
    if unknown:
        p.error("unknown configurations: " + ", ".join(sorted(unknown)))
    return args


def init_torch_distributed() -> None:
    """torchrun's variables, else FRUGAL_* ones (scripts/launch,
    bench/cluster/run --exec)."""
    if "RANK" not in os.environ and "FRUGAL_RANK" in os.environ:
        host, port = os.environ["FRUGAL_ADDR"].rsplit(":", 1)
        os.environ["RANK"] = os.environ["FRUGAL_RANK"]
        os.environ["WORLD_SIZE"] = os.environ["FRUGAL_WORLD_SIZE"]
        os.environ["MASTER_ADDR"] = host
        os.environ["MASTER_PORT"] = str(int(port) + 1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))


def tx_bytes(iface: str) -> int:
    """Bytes iface has sent so far, from /proc/net/dev."""
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, fields = line.split(":", 1)
            if name.strip() == iface:
                return int(fields.split()[8])
    raise ValueError("--nic: no interface %r in /proc/net/dev" % iface)


def time_steps(step: Callable[[], None], warmup: int, steps: int,
               nic: str, counter: Callable[[], int]
               ) -> Tuple[List[float], int, int]:
    """Seconds per step of this rank, each after a barrier, the bytes the
    network interface sent during them (barriers included) and what
    counter() grew by."""
    times = []
    for i in range(warmup + steps):
        dist.barrier()
        if i == warmup:
            sent, counted = tx_bytes(nic), counter()
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, tx_bytes(nic) - sent, counter() - counted


def child(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """One configuration, in a process of its own (PowerSGD can abort
    inside Gloo): this rank's step times and bytes sent."""
    init_torch_distributed()
    model, batch, loss_fn = configs.make_model(args.model, args.batch)
    setup = configs.setup(name, model, args, dist.get_world_size())
    optimizer = setup.optimizer

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(setup.module(batch[0]), batch[1]).backward()
        optimizer.step()

    times, sent, counted = time_steps(step, args.warmup, args.steps,
                                      args.nic, setup.counter)
    setup.close()
    result = {"times": times, "sent": sent,
              "params": sum(p.numel() for p in model.parameters())}
    result.update(setup.wire_bytes(counted / args.steps))
    configs.shutdown()
    dist.destroy_process_group()
    return result


def spawn(index: int, name: str, argv: List[str],
          timeout: float) -> Dict[str, Any]:
    """Runs child() for this rank in a new process, with torch.distributed
    (and frugal's store) on ports of their own; its result or failure."""
    env = dict(os.environ)
    env["MASTER_PORT"] = str(int(os.environ["MASTER_PORT"]) + 1 + index)
    # Under torchrun, rank 0 must serve the child's store itself.
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    if "FRUGAL_ADDR" in env:
        host, port = env["FRUGAL_ADDR"].rsplit(":", 1)
        env["FRUGAL_ADDR"] = "%s:%d" % (host, int(port) + 100 + index)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__)] + argv + [
            "--child", name, "--child-out", out]
        try:
            proc = subprocess.run(command, env=env, timeout=timeout,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        except subprocess.TimeoutExpired:
            return {"error": "no result after %d s (hung)" % timeout}
        if proc.returncode == 0 and os.path.exists(out):
            with open(out) as f:
                return json.load(f)
        lines = [line for line in proc.stdout.splitlines()
                 if "rror" in line or "terminate" in line]
        return {"error": "exit status %d: %s" % (
            proc.returncode, (lines or ["(no message)"])[-1].strip())}


def run_config(index: int, name: str, args: argparse.Namespace,
               argv: List[str], world: int) -> Dict[str, Any]:
    """Times one configuration on every rank; the row rank 0 reports."""
    mine = spawn(index, name, argv, args.config_timeout)
    everyone: List[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    row: Dict[str, Any] = {"config": name, "model": args.model,
                           "ranks": world, "batch_per_rank": args.batch}
    errors = [r["error"] for r in everyone if "error" in r]
    if errors:
        row["failed"] = errors[0]
        return row
    slowest = [max(t) for t in zip(*[r["times"] for r in everyone])]
    row["params"] = mine["params"]
    row["s_per_step"] = statistics.median(slowest)
    row["s_per_step_min"] = min(slowest)
    row["wire_bytes"] = mine["wire_bytes"]
    row["wire_source"] = mine["wire_source"]
    total = sum(r["sent"] for r in everyone) / args.steps
    # lo is shared: every local rank's traffic shows on each rank's lo.
    row["nic"] = args.nic
    row["loadavg_1min"] = os.getloadavg()[0]
    row["nic_tx_bytes_per_rank"] = (total / world / world
                                    if args.nic == "lo" else total / world)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    base = next((r["s_per_step"] for r in rows
                 if r["config"] == "compute" and "s_per_step" in r), None)
    lines = ["| configuration | s/step (median) | vs compute only | "
             "wire bytes per rank per step | NIC bytes sent per rank "
             "per step (measured) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        what = configs.DESCRIPTIONS.get(r["config"], r["config"])
        if "failed" in r:
            lines.append("| %s | failed: %s | | | |" % (what, r["failed"]))
            continue
        ratio = "%.2fx" % (r["s_per_step"] / base) if base else ""
        wire = ""
        if r.get("wire_bytes") is not None:
            wire = "%.2f MB (%s)" % (r["wire_bytes"] / 1e6, r["wire_source"])
        nic = "%.2f MB (%s)" % (r["nic_tx_bytes_per_rank"] / 1e6, r["nic"])
        lines.append("| %s | %.4f | %s | %s | %s |"
                     % (what, r["s_per_step"], ratio, wire, nic))
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        result = child(args.child, args)
        with open(args.child_out, "w") as f:
            json.dump(result, f)
        return 0
    init_torch_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = []
    for index, name in enumerate(args.configs.split(",")):
        row = run_config(index, name, args, argv, world)
        if args.label:
            row["label"] = args.label
        rows.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if rank == 0:
        table = markdown(rows)
        print(table)
        if args.table:
            with open(args.table, "w") as f:
                f.write(table)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

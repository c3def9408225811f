#!/usr/bin/python3
"""Data-parallel PyTorch training with frugal through ctypes: no torch.distributed.

Every rank trains the same model on its own data. After backward, the gradients are packed
into buckets of about --bucket-mb megabytes; each bucket is averaged across ranks by one
frugal_allreduce_async call on a contiguous float32 buffer (optionally compressed, with error
feedback kept in a frugal_state per bucket), and unpacked before the optimizer step.

  mpirun -np 2 /usr/bin/python3 pytorch_ctypes.py --lib path/to/libfrugal.so
  scripts/launch -np 2 /usr/bin/python3 pytorch_ctypes.py --lib ... --bootstrap env

At the end each rank prints (and with --out writes to DIR/rank<R>.txt) a SHA-256 of its
weights and its first and last loss: data parallelism is correct if the hashes agree.
"""
import argparse
import ctypes
import ctypes.util
import hashlib
import os
import sys

import torch

METHODS = {"dense": 0, "fp16": 1, "bf16": 2, "topk": 3, "onebit": 4, "ternary": 5, "qsgd": 6}
OP_AVERAGE = 2
TRANSPORT_MPI = 0


class Options(ctypes.Structure):
    """frugal_options, version 1 (frugal/frugal.h); filled by frugal_options_init_sized."""
    _fields_ = [
        ("struct_size", ctypes.c_size_t), ("method", ctypes.c_int), ("op", ctypes.c_int),
        ("algorithm", ctypes.c_int), ("density", ctypes.c_double), ("k", ctypes.c_uint64),
        ("bits", ctypes.c_int), ("bucket", ctypes.c_uint64), ("onebit_scaling", ctypes.c_int),
        ("qsgd_norm", ctypes.c_int), ("topk_selection", ctypes.c_int),
        ("topk_tolerance", ctypes.c_double), ("topk_fp16_values", ctypes.c_int),
        ("stochastic_rounding", ctypes.c_int), ("non_finite_flag", ctypes.c_int),
        ("error_feedback", ctypes.c_int), ("seed", ctypes.c_uint64),
        ("timeout_ms", ctypes.c_int64), ("state", ctypes.c_void_p),
    ]


class Frugal:
    """The few libfrugal calls this trainer needs; a failed call raises with frugal's message."""

    def __init__(self, path):
        # RTLD_GLOBAL: Open MPI's plugins need libmpi's symbols in the global namespace.
        self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        lib, vp, pp = self.lib, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        lib.frugal_status_string.restype = ctypes.c_char_p
        lib.frugal_last_error_message.restype = ctypes.c_char_p
        lib.frugal_version_string.restype = ctypes.c_char_p
        lib.frugal_comm_create_mpi_world.argtypes = [ctypes.c_int, pp]
        lib.frugal_comm_create_env.argtypes = [pp]
        lib.frugal_comm_destroy.argtypes = [vp]
        lib.frugal_comm_destroy.restype = None
        lib.frugal_comm_rank.argtypes = [vp, ctypes.POINTER(ctypes.c_int)]
        lib.frugal_comm_size.argtypes = [vp, ctypes.POINTER(ctypes.c_int)]
        lib.frugal_options_init_sized.argtypes = [ctypes.POINTER(Options), ctypes.c_size_t]
        lib.frugal_allreduce_async.argtypes = [vp, vp, ctypes.c_size_t, ctypes.POINTER(Options), pp]
        lib.frugal_wait.argtypes = [pp]
        lib.frugal_state_create.argtypes = [ctypes.c_float, pp]
        lib.frugal_state_destroy.argtypes = [vp]
        lib.frugal_state_destroy.restype = None

    def check(self, status, call):
        if status != 0:
            raise RuntimeError("%s failed: %s: %s" % (
                call, self.lib.frugal_status_string(status).decode(),
                self.lib.frugal_last_error_message().decode()))

    def __getattr__(self, name):  # frugal.X(...) calls frugal_X and checks its status
        function = getattr(self.lib, "frugal_" + name)
        return lambda *args: self.check(function(*args), "frugal_" + name)


def make_buckets(params, bucket_bytes):
    """Parameters in backward order (last layer first), fused into buckets of ~bucket_bytes."""
    buckets, current, size = [], [], 0
    for p in reversed(params):
        if current and size + p.numel() * 4 > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel() * 4
    if current:
        buckets.append(current)
    return buckets


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", default=os.environ.get("FRUGAL_LIBRARY") or
                        ctypes.util.find_library("frugal"),
                        help="path of libfrugal.so (default: $FRUGAL_LIBRARY, else the linker's)")
    parser.add_argument("--bootstrap", choices=["mpi", "env"], default="mpi",
                        help="mpi: under mpirun; env: FRUGAL_RANK etc. (scripts/launch), UCX")
    parser.add_argument("--method", choices=sorted(METHODS), default="dense")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bucket-mb", type=float, default=0.002,
                        help="bucket size (small here so that the toy model has several)")
    parser.add_argument("--out", help="directory for rank<R>.txt")
    args = parser.parse_args()
    if not args.lib:
        parser.error("libfrugal not found: pass --lib or set FRUGAL_LIBRARY")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    torch.set_num_threads(1)

    frugal = Frugal(args.lib)
    comm = ctypes.c_void_p()
    if args.bootstrap == "mpi":
        frugal.comm_create_mpi_world(TRANSPORT_MPI, ctypes.byref(comm))
    else:
        frugal.comm_create_env(ctypes.byref(comm))
    rank, size = ctypes.c_int(), ctypes.c_int()
    frugal.comm_rank(comm, ctypes.byref(rank))
    frugal.comm_size(comm, ctypes.byref(size))
    rank, size = rank.value, size.value

    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    # --- frugal integration: buckets, one state each (error feedback), options -------------
    buckets = make_buckets(list(model.parameters()), int(args.bucket_mb * 1e6))
    states = []
    for _ in buckets:
        state = ctypes.c_void_p()
        frugal.state_create(ctypes.c_float(1.0), ctypes.byref(state))
        states.append(state)
    options = Options()
    frugal.options_init_sized(ctypes.byref(options), ctypes.sizeof(options))
    options.method, options.op, options.density = METHODS[args.method], OP_AVERAGE, 0.1

    def allreduce_gradients():
        flats, requests = [], []
        for bucket, state in zip(buckets, states):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket]).contiguous()
            options.state = state  # the call copies options; state stays ours
            request = ctypes.c_void_p()
            frugal.allreduce_async(comm, ctypes.c_void_p(flat.data_ptr()), flat.numel(),
                                   ctypes.byref(options), ctypes.byref(request))
            flats.append(flat)
            requests.append(request)
        for bucket, flat, request in zip(buckets, flats, requests):
            frugal.wait(ctypes.byref(request))
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
    # ------------------------------------------------------------------------------------

    generator = torch.Generator().manual_seed(1000 + rank)  # each rank's own data
    w_true = torch.linspace(-1, 1, 16).unsqueeze(1)
    losses = []
    for _ in range(args.steps):
        x = torch.randn(64, 16, generator=generator)
        loss = torch.nn.functional.mse_loss(model(x), x @ w_true)
        optimizer.zero_grad()
        loss.backward()
        allreduce_gradients()
        optimizer.step()
        losses.append(loss.item())

    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().contiguous().numpy().tobytes())
    report = "rank %d of %d method %s buckets %d weights %s loss %.6f %.6f" % (
        rank, size, args.method, len(buckets), digest.hexdigest(), losses[0], losses[-1])
    print(report, flush=True)
    if args.out:
        with open(os.path.join(args.out, "rank%d.txt" % rank), "w") as f:
            f.write(report + "\n")
    for state in states:
        frugal.lib.frugal_state_destroy(state)
    frugal.lib.frugal_comm_destroy(comm)  # before MPI is finalised at exit


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        print("pytorch_ctypes: %s" % error, file=sys.stderr)
        sys.exit(1)

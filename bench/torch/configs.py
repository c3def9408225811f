"""The models and the gradient-averaging configurations step_bench.py
times: how each wraps the model and optimizer, and what it sends."""
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples", "pytorch")

DESCRIPTIONS = {
    "compute": "no communication (compute only)",
    "ddp-noop": "DDP, hook that sends nothing (DDP's own cost)",
    "ddp": "DDP, Gloo allreduce fp32",
    "ddp-fp16": "DDP + fp16_compress_hook",
    "ddp-powersgd1": "DDP + PowerSGD rank 1",
    "ddp-powersgd4": "DDP + PowerSGD rank 4",
    "ddp-powersgd1-1bucket": "DDP + PowerSGD rank 1, one bucket",
    "ddp-powersgd4-1bucket": "DDP + PowerSGD rank 4, one bucket",
    "hook-none": "DDP + frugal hook, dense",
    "hook-fp16": "DDP + frugal hook, fp16",
    "hook-onebit": "DDP + frugal hook, 1-bit",
    "hook-onebit-whole": "DDP + frugal hook, 1-bit, dense_vectors=False",
    "hook-topk": "DDP + frugal hook, top-k 1%",
    "hook-qsgd": "DDP + frugal hook, QSGD 4 bits",
    "hook-powersgd1": "DDP + frugal PowerSGD hook, rank 1",
    "hook-powersgd4": "DDP + frugal PowerSGD hook, rank 4",
    "opt-none": "frugal DistributedOptimizer, dense",
    "opt-fp16": "frugal DistributedOptimizer, fp16",
    "opt-onebit": "frugal DistributedOptimizer, 1-bit",
    "opt-topk": "frugal DistributedOptimizer, top-k 1%",
    "opt-qsgd": "frugal DistributedOptimizer, QSGD 4 bits",
}

Batch = Tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_model(kind: str, batch: int) -> Tuple[nn.Module, Batch, LossFn]:
    """The same weights on every rank; a random batch of this rank's."""
    torch.manual_seed(0)
    if kind == "linear":
        layers = []
        for i in range(6):
            layers += [nn.Linear(2048, 2048)] + ([nn.ReLU()] if i < 5 else [])
        model = nn.Sequential(*layers)
        torch.manual_seed(1 + dist.get_rank())
        data = (torch.randn(batch, 2048), torch.randn(batch, 2048))
        return model, data, nn.functional.mse_loss
    sys.path.insert(0, EXAMPLES)
    import fashion
    model = fashion.make_model()
    torch.manual_seed(1 + dist.get_rank())
    data = (torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,)))
    return model, data, nn.functional.cross_entropy


def ring_bytes(numel: int, bytes_per_element: float, world: int) -> float:
    """What each rank sends in a ring allreduce of numel elements."""
    return 2.0 * (world - 1) / world * numel * bytes_per_element


def powersgd_elements(model: nn.Module, rank: int) -> int:
    """Elements PowerSGD allreduces per step: P and Q of each compressed
    matrix, the uncompressed tensors whole (min_compression_rate 2)."""
    total = 0
    for p in model.parameters():
        rows = p.shape[0] if p.dim() > 1 else p.numel()
        cols = p.numel() // rows
        if p.dim() > 1 and rows * cols >= 2 * (rows + cols) * rank:
            total += (rows + cols) * rank
        else:
            total += p.numel()
    return total


class Setup:
    """A configuration applied to a model: module() runs forward,
    optimizer steps, wire_bytes() says what a step sends per rank."""

    def __init__(self, module: nn.Module, optimizer: Any,
                 wire: Optional[float], source: str,
                 close: Callable[[], None] = lambda: None,
                 counter: Optional[Callable[[], int]] = None) -> None:
        self.module, self.optimizer = module, optimizer
        self._wire, self._source, self.close = wire, source, close
        self._counter = counter

    def counter(self) -> int:
        """Bytes sent so far, as frugal counts them (0 for the others)."""
        return self._counter() if self._counter else 0

    def wire_bytes(self, counted_per_step: float) -> Dict[str, Any]:
        """frugal's own count where there is one, else the computed
        figure."""
        if self._counter:
            return {"wire_bytes": counted_per_step,
                    "wire_source": "counted by frugal"}
        return {"wire_bytes": self._wire, "wire_source": self._source}


def _noop_hook(state: Any, bucket: dist.GradBucket
               ) -> torch.futures.Future[torch.Tensor]:
    """Returns the bucket as it is: what DDP costs without any exchange,
    the floor for every communication hook."""
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def _compression(method: str, density: float) -> Any:
    import frugal
    c = frugal.Compression
    return {"none": c.none(), "fp16": c.fp16(), "onebit": c.onebit(),
            "topk": c.topk(density=density), "qsgd": c.qsgd(bits=4)}[method]


def _frugal(transport: Optional[str]) -> Any:
    import frugal
    if not frugal.is_initialized():
        frugal.init(transport)
    return frugal


def setup(name: str, model: nn.Module, args: Any, world: int) -> Setup:
    numel = sum(p.numel() for p in model.parameters())
    sgd = torch.optim.SGD
    if name == "compute":
        return Setup(model, sgd(model.parameters(), lr=0.01), 0.0, "none")
    if name.startswith("ddp"):
        if name.endswith("-1bucket"):  # one bucket: no concurrent buckets
            dist._DEFAULT_FIRST_BUCKET_BYTES = 1 << 40
            ddp = DDP(model, bucket_cap_mb=1 << 20)
        else:
            ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
        wire, source = ring_bytes(numel, 4, world), "computed, ring"
        if name == "ddp-noop":
            ddp.register_comm_hook(None, _noop_hook)
            wire, source = 0.0, "none"
        elif name == "ddp-fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
            wire /= 2
        elif name.startswith("ddp-powersgd"):
            rank = int(name[len("ddp-powersgd")])
            state = powerSGD_hook.PowerSGDState(
                None, matrix_approximation_rank=rank, start_powerSGD_iter=2)
            ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
            wire = ring_bytes(powersgd_elements(model, rank), 4, world)
        return Setup(ddp, sgd(ddp.parameters(), lr=0.01), wire, source)
    method = name.split("-")[1]
    _frugal(args.transport)
    import frugal.torch as ft
    if name.startswith("hook-powersgd"):
        # start_iter 2, as ddp-powersgd's start_powerSGD_iter: the timed
        # steps (after --warmup) are compressed.
        ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
        ps = ft.PowerSGDHookState(rank=int(name[len("hook-powersgd"):]),
                                  start_iter=2)
        ddp.register_comm_hook(ps, ft.powersgd_hook)
        return Setup(ddp, sgd(ddp.parameters(), lr=0.01), None, "",
                     close=ps.close, counter=lambda: ps.wire_bytes_sent)
    compression = _compression(method, args.density)
    if name.startswith("hook"):
        ddp = DDP(model, bucket_cap_mb=args.bucket_mb)
        # "-whole": each bucket compressed whole, vectors included.
        state = ft.CommHookState(compression=compression,
                                 dense_vectors=not name.endswith("-whole"))
        ddp.register_comm_hook(state, ft.comm_hook)
        return Setup(ddp, sgd(ddp.parameters(), lr=0.01), None, "",
                     close=state.close,
                     counter=lambda: state.wire_bytes_sent)
    opt = ft.DistributedOptimizer(
        sgd(model.parameters(), lr=0.01), model.named_parameters(),
        compression=compression, bucket_mb=args.bucket_mb)
    return Setup(model, opt, None, "",
                 counter=lambda: opt.wire_bytes_sent)


def shutdown() -> None:
    if "frugal" in sys.modules and sys.modules["frugal"].is_initialized():
        sys.modules["frugal"].shutdown()

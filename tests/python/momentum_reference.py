"""Shared by the momentum-correction tests (test_momentum.py in one
process, momentum_worker.py on 2 ranks): a small model, each rank's data,
the DistributedOptimizer loop, and a serial reference of the update rule
computed from every rank's data in one process.

The reference is DGC's rule with a dense allreduce, written out by hand:
g = the ranks' average gradient (summed over the backward passes),
v = mu*v + g (v = g at first), d = v (Nesterov: g + mu*v), then
p -= lr*(d + wd*p): weight decay outside the momentum.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import frugal
import frugal.torch as ft

LR = 0.05
MU = 0.9
WD = 0.01
BATCH = 8


def make_model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))


Batch = Tuple[torch.Tensor, torch.Tensor]


def batch(rank: int, step: int, part: int) -> Batch:
    """Rank `rank`'s data for backward pass `part` of step `step`."""
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + part)
    x = torch.randn(BATCH, 20, generator=g)
    y = torch.randint(0, 4, (BATCH,), generator=g)
    return x, y


def loss_of(model: nn.Module, rank: int, step: int,
            part: int) -> torch.Tensor:
    x, y = batch(rank, step, part)
    return nn.functional.cross_entropy(model(x), y)


def sgd(model: nn.Module, nesterov: bool = False,
        **kwargs: float) -> torch.optim.SGD:
    options = dict(lr=LR, momentum=MU, weight_decay=WD)
    options.update(kwargs)
    return torch.optim.SGD(model.parameters(), nesterov=nesterov,
                           **options)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range,
          passes: int = 1,
          poison: Callable[[int], bool] = lambda step: False) -> List[bool]:
    """DistributedOptimizer steps on this rank's data; poison(step): put a
    NaN into this rank's gradient. Returns which steps were skipped."""
    skipped = []
    for step in steps:
        opt.zero_grad()
        for part in range(passes):
            loss = loss_of(model, frugal.rank(), step, part)
            if poison(step) and part == passes - 1:
                loss = loss * float("nan")
            loss.backward()
        opt.step()
        skipped.append(bool(getattr(opt, "last_step_skipped", False)))
    return skipped


def reference(steps: int, world: int, nesterov: bool = False,
              passes: int = 1, skip: Optional[int] = None,
              wd_in_momentum: bool = False, mu: float = MU
              ) -> Tuple[nn.Module, Dict[str, torch.Tensor]]:
    """The weights after `steps` steps by the rule above (step `skip`
    leaves no trace), and the velocities by parameter name.
    wd_in_momentum: torch's SGD instead (weight decay inside the
    momentum), for contrast. mu: the momentum."""
    model = make_model()
    params = list(model.parameters())
    velocity: List[Optional[torch.Tensor]] = [None] * len(params)
    for step in range(steps):
        if step == skip:
            continue
        total = [torch.zeros_like(p) for p in params]
        for rank in range(world):
            model.zero_grad()
            for part in range(passes):
                loss_of(model, rank, step, part).backward()
            for t, p in zip(total, params):
                t.add_(p.grad)
        with torch.no_grad():
            for i, p in enumerate(params):
                g = total[i] / world
                if wd_in_momentum:
                    g = g + WD * p
                v = velocity[i]
                velocity[i] = g.clone() if v is None else mu * v + g
                d = g + mu * velocity[i] if nesterov else velocity[i]
                if not wd_in_momentum:
                    d = d + WD * p
                p.sub_(LR * d)
    names = [name for name, _ in model.named_parameters()]
    return model, {name: v for name, v in zip(names, velocity)
                   if v is not None}


def rel_diff(a: nn.Module, b: nn.Module) -> float:
    """Largest ||a - b|| / ||b|| over the parameters."""
    return max(float((p - q).norm() / q.norm())
               for p, q in zip(a.parameters(), b.parameters()))


def velocities(opt: torch.optim.Optimizer) -> Dict[str, torch.Tensor]:
    """This rank's velocities by parameter name, from its state_dict."""
    return dict(opt.state_dict()["frugal"]["velocities"])


def velocity_diff(got: Dict[str, torch.Tensor],
                  want: Dict[str, torch.Tensor]) -> float:
    """Largest ||got - want|| / ||want|| (the same names required)."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    return max(float((got[n] - want[n]).norm() / want[n].norm())
               for n in want)


def wrap(model: nn.Module, nesterov: bool = False,
         **kwargs: object) -> torch.optim.Optimizer:
    kwargs.setdefault("bucket_mb", 0.001)  # several buckets
    return ft.DistributedOptimizer(sgd(model, nesterov),
                                   model.named_parameters(), **kwargs)

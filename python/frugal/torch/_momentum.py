"""DGC's momentum correction for DistributedOptimizer (Lin et al. 2018):
each rank keeps the momentum velocity of its own gradient, and the
allreduce carries these velocities instead of the gradients.

The recursion v = mu*v + g is linear, so with a dense allreduce the
average (or sum) of the ranks' velocities is exactly the velocity of the
averaged (summed) gradient and training is unchanged; with compression,
error feedback works on the smooth velocity instead of each noisy
gradient, which loses far less. Weight decay stays out of the velocities
(as DGC asks): the wrapped SGD runs with its own momentum off and adds
wd*p to the reduced direction, so the update is p -= lr*(avg + wd*p).
frugal-train does the same (trainer/sgd.hpp); whether it is the default
for a method is the library's rule, read through the extension.
"""
import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

import frugal
from frugal._ext import ext

__all__ = ["Velocities", "by_default", "momentum_off", "resolve"]


def by_default(method: str) -> bool:
    """The library's rule (compression::momentum_correction_by_default):
    on for top-k and 1-bit, off for the quantizers and float formats."""
    return bool(ext.momentum_correction_by_default(method))


def unsupported(optimizer: torch.optim.Optimizer) -> Optional[str]:
    """Why momentum correction cannot replace `optimizer`'s momentum, or
    None when it can: it needs torch.optim.SGD with momentum > 0 and
    dampening 0 in every parameter group."""
    if not isinstance(optimizer, torch.optim.SGD):
        return ("needs a torch.optim.SGD (whose momentum it replaces), "
                "not a %s" % type(optimizer).__name__)
    for i, group in enumerate(optimizer.param_groups):
        if not group["momentum"] > 0:
            return ("needs momentum > 0, and parameter group %d has "
                    "momentum %r" % (i, group["momentum"]))
        if group["dampening"] != 0:
            return ("needs dampening 0, and parameter group %d has "
                    "dampening %r" % (i, group["dampening"]))
    return None


def resolve(requested: Optional[bool], optimizer: torch.optim.Optimizer,
            method: str, error_feedback: bool) -> bool:
    """Whether to use momentum correction. None: the library's default
    for `method`, when error feedback is on and `optimizer` allows it
    (silently off otherwise); True: on, or InvalidArgumentError saying
    why it cannot be; False: off."""
    if requested is not None and not isinstance(requested, bool):
        raise frugal.InvalidArgumentError(
            "momentum_correction: expected None, True or False, got %r"
            % (requested,))
    reason = unsupported(optimizer)
    if requested is None:
        return reason is None and error_feedback and by_default(method)
    if requested and reason is not None:
        raise frugal.InvalidArgumentError("momentum_correction: " + reason)
    return requested


class Velocities:
    """This rank's velocity of each parameter, keyed by id(parameter).

    advance() turns a parameter's (accumulated) gradient into this rank's
    update direction in place: v = mu*v + g, then g := v, or g + mu*v
    with Nesterov; mu and nesterov come from the parameter's group as it
    is at that moment (schedulers change them, and the optimizer's
    load_state_dict replaces the group dicts). With keep_previous, the
    velocities a step replaced are kept until commit() (the step stands)
    or rewind() (it was skipped or failed: they come back, so a skipped
    step leaves no trace). zero_non_finite replaces the gradient's NaN and
    Inf by 0 before they reach the velocity (non_finite="zero").
    """

    def __init__(self, named: List[Tuple[str, torch.nn.Parameter]],
                 keep_previous: bool, zero_non_finite: bool) -> None:
        self._names = {id(p): name for name, p in named}
        self._shapes = {name: p.shape for name, p in named}
        self._keep = keep_previous
        self._zero = zero_non_finite
        self._velocity: Dict[int, torch.Tensor] = {}
        # The velocities this step replaced (None: there was none yet).
        self._previous: Dict[int, Optional[torch.Tensor]] = {}

    @torch.no_grad()
    def advance(self, key: int, grad: torch.Tensor,
                group: Dict[str, Any]) -> None:
        mu = float(group["momentum"])
        if self._zero:
            torch.nan_to_num_(grad, nan=0.0, posinf=0.0, neginf=0.0)
        old = self._velocity.get(key)
        if old is None:
            new = grad.detach().clone()
        elif self._keep:
            new = old.mul(mu).add_(grad)  # `old` stays as it was
        else:
            new = old.mul_(mu).add_(grad)
        if self._keep and key not in self._previous:
            self._previous[key] = old
        self._velocity[key] = new
        if group["nesterov"]:
            grad.add_(new, alpha=mu)
        else:
            grad.copy_(new)

    def commit(self) -> None:
        self._previous.clear()

    def rewind(self) -> None:
        for key, old in self._previous.items():
            if old is None:
                del self._velocity[key]
            else:
                self._velocity[key] = old
        self._previous.clear()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Copies of the velocities by parameter name (parameters that
        have had no step yet are absent)."""
        return {self._names[key]: v.clone()
                for key, v in self._velocity.items()}

    def check(self, saved: Any) -> Dict[int, torch.Tensor]:
        """The velocities of a state_dict(), checked against these
        parameters (names and shapes), or InvalidArgumentError."""
        what = "DistributedOptimizer.load_state_dict: velocities"
        if not isinstance(saved, dict):
            raise frugal.InvalidArgumentError(
                "%s: expected a dict, got %s" % (what, type(saved).__name__))
        keys = {name: key for key, name in self._names.items()}
        out = {}
        for name, v in saved.items():
            if name not in keys:
                raise frugal.InvalidArgumentError(
                    "%s: parameter %r is not one of this optimizer's"
                    % (what, name))
            if not isinstance(v, torch.Tensor) or \
                    v.shape != self._shapes[name]:
                raise frugal.InvalidArgumentError(
                    "%s: parameter %r has shape %s, the saved velocity is "
                    "%r" % (what, name, tuple(self._shapes[name]),
                            tuple(v.shape) if isinstance(v, torch.Tensor)
                            else type(v).__name__))
            out[keys[name]] = v.detach().to(torch.float32).clone()
        return out

    def load(self, checked: Dict[int, torch.Tensor]) -> None:
        self._velocity = dict(checked)
        self._previous.clear()


@contextlib.contextmanager
def momentum_off(optimizer: torch.optim.Optimizer,
                 params: List[torch.nn.Parameter]) -> Iterator[None]:
    """Runs SGD's step with its momentum switched off (the direction is
    already a velocity), then restores the groups' momentum and nesterov,
    and removes the empty momentum buffers torch's SGD records meanwhile,
    so that its state holds no momentum of its own."""
    saved = [(g["momentum"], g["nesterov"]) for g in optimizer.param_groups]
    had_state = {id(p) for p in params if p in optimizer.state}
    try:
        for g in optimizer.param_groups:
            g["momentum"], g["nesterov"] = 0, False
        yield
    finally:
        for g, (momentum, nesterov) in zip(optimizer.param_groups, saved):
            g["momentum"], g["nesterov"] = momentum, nesterov
        for p in params:
            state = optimizer.state.get(p)
            if state is None or "momentum_buffer" not in state or \
                    state["momentum_buffer"] is not None:
                continue
            del state["momentum_buffer"]
            if not state and id(p) not in had_state:
                del optimizer.state[p]

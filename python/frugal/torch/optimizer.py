"""DistributedOptimizer: an optimizer whose step() averages the gradients
over frugal's ranks first (the Horovod habit; no torch.distributed).

    opt = frugal.torch.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model.named_parameters(), compression=frugal.Compression.onebit())

Each parameter's gradient accumulator gets a hook (torch 1.13 has no
post-accumulate-grad hook; Horovod's trick reaches the AccumulateGrad node
through p.expand_as(p)), which hands the gradient to frugal.Buckets as soon
as backward has produced it: a bucket's allreduce starts while backward
computes the rest. step() waits for them, then runs the wrapped optimizer.

synchronize() can also be called first, to work on the averaged gradients
before the update (Horovod's habit: synchronize, clip, step): step() then
runs on them without reducing again, until new gradients come in.

With momentum correction (DGC; on by default for top-k and 1-bit over
torch.optim.SGD with momentum, see _momentum.py) the hook first turns the
gradient into this rank's momentum velocity, the velocities are averaged,
and step() runs SGD with its own momentum off.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

import frugal
from frugal.autotune import AutotuneLike
from frugal.guardrail import GuardrailLike
from frugal.torch import _momentum
from frugal.torch._checkpoint import own_entry

__all__ = ["DistributedOptimizer"]

FORMAT = "frugal.torch.DistributedOptimizer/1"


def _named(optimizer: torch.optim.Optimizer,
           named_parameters: Optional[Iterable[Tuple[str, Any]]]
           ) -> List[Tuple[str, torch.nn.Parameter]]:
    """The optimizer's trainable parameters with unique names, in the
    optimizer's order."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if named_parameters is None:
        names = {p: "param.%d" % i for i, p in enumerate(params)}
    else:
        pairs = list(named_parameters)
        if any(not (isinstance(x, tuple) and len(x) == 2) for x in pairs):
            raise frugal.InvalidArgumentError(
                "named_parameters: expected (name, parameter) pairs, such "
                "as model.named_parameters()")
        names = {p: n for n, p in pairs}
        if len(set(names.values())) != len(pairs):
            raise frugal.InvalidArgumentError(
                "named_parameters: names are not unique")
        missing = [i for i, p in enumerate(params) if p not in names]
        if missing:
            raise frugal.InvalidArgumentError(
                "named_parameters: %d of the optimizer's parameters (the "
                "first is number %d) are not among them"
                % (len(missing), missing[0]))
    out = []
    for p in params:
        if not p.requires_grad:
            continue
        if p.dtype != torch.float32 or p.device.type != "cpu":
            raise frugal.InvalidArgumentError(
                "DistributedOptimizer: parameter %s is %s on %s; frugal "
                "averages float32 gradients in CPU memory (model.float())"
                % (names[p], p.dtype, p.device))
        out.append((names[p], p))
    return out


class _DistributedOptimizer(torch.optim.Optimizer):
    """The methods mixed into the wrapped optimizer's class."""

    def __init__(self, params: Any, named: List[Tuple[str, Any]],
                 passes: int, buckets: frugal.Buckets,
                 comm: frugal.Communicator,
                 momentum: Optional[Tuple[bool, bool]]) -> None:
        super(self.__class__, self).__init__(params)
        self._frugal = buckets
        # Momentum correction: (keep_previous, zero_non_finite), or None.
        self._velocities = None if momentum is None else \
            _momentum.Velocities(named, *momentum)
        # Each parameter's group by index: load_state_dict replaces the
        # group dicts, keeping their order and parameters.
        self._group_of = {id(p): i for i, g in enumerate(self.param_groups)
                          for p in g["params"]}
        self._comm = comm
        self._passes = passes
        self._params = named
        self._ids: Dict[int, int] = {}
        self._counts: Dict[int, int] = {}
        self._marked: set = set()
        # p.grad holds the reduced gradients of a finished synchronize()
        # that step() has not used yet: no backward since, no zero_grad().
        self._synchronized = False
        self._accumulators: List[Any] = []
        self.wire_bytes_sent = 0  # by this rank, over every step so far
        # Backward produces the last layers' gradients first.
        for name, p in reversed(named):
            self._ids[id(p)] = buckets.add(name, p.numel(), p.dim())
        for _, p in named:
            self._register(p)

    def _register(self, p: torch.nn.Parameter) -> None:
        accumulator = p.expand_as(p).grad_fn.next_functions[0][0]
        accumulator.register_hook(self._hook(p))
        self._accumulators.append(accumulator)  # the hook lives with it

    def _hook(self, p: torch.nn.Parameter) -> Callable[..., None]:
        key = id(p)

        def hook(*_: Any) -> None:
            # A new gradient: whatever synchronize() reduced is stale.
            self._synchronized = False
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
            if count == self._passes:
                self._mark(p)
        return hook

    def _mark(self, p: torch.nn.Parameter) -> None:
        key = id(p)
        if key in self._marked:
            raise frugal.InvalidArgumentError(
                "DistributedOptimizer: a gradient was produced again before "
                "step(); with several backward passes per step, pass "
                "backward_passes_per_step")
        self._marked.add(key)
        if self._velocities is not None:
            # Once per step, on the gradient of all the backward passes.
            self._velocities.advance(
                key, p.grad, self.param_groups[self._group_of[key]])
        self._frugal.mark_ready(self._ids[key], p.grad)

    @property
    def momentum_correction(self) -> bool:
        """Whether the allreduce carries this rank's momentum velocities
        (DGC's momentum correction) instead of its gradients."""
        return self._velocities is not None

    def synchronize(self) -> None:
        """Waits for every gradient's average (marking the gradients that
        backward did not produce: None counts as zeros) and writes it
        into p.grad. The next step() uses these averages as they are then
        (clipped, say) without reducing them again. A second call before
        any new backward returns at once: the gradients are reduced once
        per step, and so are the error feedback and the velocities."""
        if self._synchronized:
            return
        try:
            for _, p in self._params:
                if id(p) not in self._marked:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    self._mark(p)
            self._marked.clear()
            self._counts.clear()
            self._frugal.finish()
        except BaseException:
            # The step is over without an update: as if it never began.
            if self._velocities is not None:
                self._velocities.rewind()
            raise
        self.wire_bytes_sent += self._frugal.last_step_wire_bytes
        if self._velocities is not None:
            if self._frugal.last_step_skipped:
                self._velocities.rewind()
            else:
                self._velocities.commit()
        self._synchronized = True

    @property
    def last_step_guardrail_events(self) -> List[Dict[str, Any]]:
        """With guardrail=: the changes of a bucket's setting the last
        reduction decided (frugal.Buckets.last_step_guardrail_events)."""
        return self._frugal.last_step_guardrail_events

    @property
    def guardrail_rungs(self) -> List[int]:
        """Each bucket's rung on its guardrail ladder (0: the configured
        compression), in bucket order; empty before the first step."""
        return [self._frugal.bucket_rung(b)
                for b in range(self._frugal.bucket_count)]

    @property
    def last_step_autotune_events(self) -> List[Dict[str, Any]]:
        """With autotune=: the moves and decisions of compression = auto
        the last reduction made (frugal.Buckets.last_step_autotune_events).
        """
        return self._frugal.last_step_autotune_events

    @property
    def autotune_settings(self) -> List[Optional[str]]:
        """With autotune=: the candidate each bucket runs at the next step
        (its name, e.g. "fp16"), in bucket order; None for a dense bucket
        (1-D parameters). Empty before the first step or with auto off."""
        b = self._frugal
        if b.autotune is None:
            return []
        names = b.autotune_candidates
        return [None if b.bucket_is_dense(i) else
                names[b.bucket_candidate(i)] for i in range(b.bucket_count)]

    @property
    def last_step_skipped(self) -> bool:
        """Under non_finite="skip": the last step() was skipped on every
        rank (some rank had a NaN or Inf gradient)."""
        return self._frugal.last_step_skipped

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Averages the gradients, unless synchronize() already has since
        the last backward, then runs the wrapped optimizer's step (unless
        non_finite="skip" skipped it)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.synchronize()
        # This step uses the averages: the next one needs new gradients.
        self._synchronized = False
        if self._frugal.last_step_skipped:
            return loss
        if self._velocities is None:
            super(self.__class__, self).step()
            return loss
        # p.grad holds the averaged velocity direction.
        with _momentum.momentum_off(self, [p for _, p in self._params]):
            super(self.__class__, self).step()
        return loss

    def zero_grad(self, set_to_none: bool = False) -> None:
        if self._marked:
            raise frugal.InvalidArgumentError(
                "DistributedOptimizer.zero_grad: called between backward "
                "and step(); the gradients are being averaged (call step() "
                "or synchronize() first)")
        # The averages synchronize() wrote are gone: step() reduces what
        # p.grad holds then, as it would without synchronize().
        self._synchronized = False
        super(self.__class__, self).zero_grad(set_to_none)

    def state_dict(self, all_ranks: bool = False) -> Dict[str, Any]:
        """The wrapped optimizer's state plus, under "frugal", this rank's
        error-feedback residuals and, with momentum correction, its
        velocities (all ranks' with all_ranks=True, a collective call)."""
        state = super(self.__class__, self).state_dict()
        comm = self._comm
        mine = {"rank": comm.rank, "world_size": comm.size,
                "buckets": self._frugal.state_dict(),
                "momentum_correction": self.momentum_correction}
        if self._velocities is not None:
            mine["velocities"] = self._velocities.state_dict()
        if all_ranks:
            state["frugal"] = {"format": FORMAT, "ranks":
                               frugal.allgather_object(mine, comm=comm)}
        else:
            state["frugal"] = dict(mine, format=FORMAT)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("frugal", None)
        if saved is not None:
            comm = self._comm
            mine = own_entry(saved, FORMAT, comm.rank, comm.size,
                             "DistributedOptimizer")
            # States saved before momentum correction existed had none.
            corrected = bool(mine.get("momentum_correction", False))
            if corrected != self.momentum_correction:
                raise frugal.InvalidArgumentError(
                    "DistributedOptimizer.load_state_dict: saved with "
                    "momentum_correction=%s, this optimizer has "
                    "momentum_correction=%s (its residuals are of %s); "
                    "pass momentum_correction=%s to match"
                    % (corrected, self.momentum_correction,
                       "velocities" if corrected else "gradients",
                       corrected))
            velocities = None
            if self._velocities is not None:
                velocities = self._velocities.check(mine.get("velocities"))
            self._frugal.load_state_dict(mine["buckets"])
            if self._velocities is not None and velocities is not None:
                self._velocities.load(velocities)
        super(self.__class__, self).load_state_dict(state)


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Optional[Iterable[Any]] = None,
                         compression: Any = None, *, op: str = "average",
                         bucket_mb: float = 25.0,
                         error_feedback: bool = True, seed: int = 0,
                         non_finite: str = "default",
                         backward_passes_per_step: int = 1,
                         timeout: Optional[float] = None,
                         dense_vectors: bool = True,
                         comm: Optional[frugal.Communicator] = None,
                         momentum_correction: Optional[bool] = None,
                         guardrail: GuardrailLike = None,
                         hierarchical: bool = False,
                         autotune: AutotuneLike = None
                         ) -> torch.optim.Optimizer:
    """Wraps `optimizer` (an instance of a subclass of its class, so LR
    schedulers accept it) so that step() first averages the gradients.

    named_parameters: (name, parameter) pairs covering the optimizer's
    parameters, e.g. model.named_parameters() (names key the error
    feedback in checkpoints; default: numbered). compression, op,
    bucket_mb, error_feedback, seed, non_finite, timeout, dense_vectors
    (1-D parameters reduced uncompressed), guardrail (None, True or a
    frugal.Guardrail: buckets move to denser settings while error
    feedback holds back too much; see the attributes
    last_step_guardrail_events and guardrail_rungs), hierarchical (dense
    within a host, compressed between hosts; the reduction then runs in
    step(), not during backward), autotune (None, True or a
    frugal.Autotune: compression = auto, with compression None; see the
    attributes last_step_autotune_events and autotune_settings): as
    frugal.Buckets.
    backward_passes_per_step: backward passes whose
    gradients accumulate before each step(). Call frugal.init() first;
    every rank wraps the same parameters in the same order.

    momentum_correction (DGC): each rank advances its own momentum
    velocity of its (accumulated) gradient, v = mu*v + g (Nesterov: it
    sends g + mu*v), the allreduce averages these velocities, and step()
    runs the SGD with its momentum off: p -= lr*(average + wd*p), weight
    decay outside the momentum. None (default): on where the library's
    rule says so (onebit and topk) with error feedback, when `optimizer`
    is a torch.optim.SGD with momentum > 0 and dampening 0 in every
    group; otherwise off. True: on (InvalidArgumentError if `optimizer`
    is not such an SGD); False: off. A skipped or failed step leaves the
    velocities as they were (with non_finite "skip" or "error", or a
    compression's default check). See the attribute momentum_correction.
    """
    if isinstance(backward_passes_per_step, bool) or \
            not isinstance(backward_passes_per_step, int) or \
            backward_passes_per_step < 1:
        raise frugal.InvalidArgumentError(
            "backward_passes_per_step: must be an int >= 1, got %r"
            % (backward_passes_per_step,))
    named = _named(optimizer, named_parameters)
    comm = frugal.get_communicator() if comm is None else comm
    buckets = frugal.Buckets(compression=compression, op=op,
                             bucket_mb=bucket_mb,
                             error_feedback=error_feedback, seed=seed,
                             non_finite=non_finite, timeout=timeout,
                             dense_vectors=dense_vectors, comm=comm,
                             guardrail=guardrail,
                             hierarchical=hierarchical, autotune=autotune)
    compressed = frugal.Compression.of(compression)
    momentum = None
    if _momentum.resolve(momentum_correction, optimizer, compressed.method,
                         error_feedback):
        # Keep the velocities a step replaces whenever a step can end
        # without an update (non-finite gradients), to put them back.
        keep = non_finite in ("skip", "error") or \
            (non_finite == "default" and compressed.compressed)
        momentum = (keep, non_finite == "zero")
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_DistributedOptimizer.__dict__))
    wrapped = cls(optimizer.param_groups, named, backward_passes_per_step,
                  buckets, comm, momentum)
    wrapped.state.update(optimizer.state)
    return wrapped

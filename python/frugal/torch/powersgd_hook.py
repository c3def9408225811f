"""A DDP communication hook that averages each gradient bucket with
frugal's PowerSGD.

    state = frugal.torch.PowerSGDHookState(rank=2, start_iter=10)
    ddp.register_comm_hook(state, frugal.torch.powersgd_hook)

Per bucket, the bucket's gradients (views of its buffer, each with its
parameter's shape) go through frugal.powersgd_allreduce in place: each
matrix (first dimension by the rest) is replaced by the rank-r
approximation of the error-compensated average, every 1-D tensor and
every matrix too small to pay by the exact average. Any number of buckets
works.

frugal's PowerSGD call is blocking, so the hook only enqueues it: a
waiter thread runs the buckets' calls in order (releasing the GIL while
they communicate) and completes each bucket's future.

Each bucket layout has its own frugal.PowerSGDState (Q warm starts,
residuals, step counter), keyed as frugal.torch.CommHookState keys its
residuals: by the bucket's index, its size and which parameters it holds.
A layout DDP no longer uses (its first iteration's buckets, before the
rebuild) is dropped at the end of an iteration. start_iter counts
iterations of the hook, not of a state: a layout first seen at iteration
k stays exact until iteration start_iter, like PyTorch's
start_powerSGD_iter. A bucket that is exactly a union of known layouts
(the first one after a restart from a checkpoint) is reduced as those
layouts, each with its own state, so a resumed run computes what an
uninterrupted one does.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

import frugal
from frugal.powersgd import POWERSGD_DEFAULTS, powersgd_options
from frugal.torch._layouts import Layout as _Layout
from frugal.torch._layouts import LayoutStates, unwrap

__all__ = ["PowerSGDHookState", "powersgd_hook"]

FORMAT = "frugal.torch.PowerSGDHookState/1"
_D = POWERSGD_DEFAULTS
# One call of the waiter: a layout's state, its tensors, its start_iter.
_Call = Tuple[frugal.PowerSGDState, List[torch.Tensor], int, _Layout]


class PowerSGDHookState(LayoutStates):
    """What frugal.torch.powersgd_hook needs across steps: the options,
    one frugal.PowerSGDState per bucket layout, and the waiter thread.

    rank: the approximation's rank r (PyTorch's
    matrix_approximation_rank). start_iter: iterations averaged exactly
    before compression starts (PyTorch's start_powerSGD_iter).
    min_compression_rate, seed, error_feedback: as
    frugal.powersgd_allreduce; the defaults are the library's. timeout:
    seconds any wait may take (default: the communicator's). Create it
    after frugal.init(), with the same arguments on every rank.
    """

    def __init__(self, rank: int = _D["rank"], *,
                 start_iter: int = _D["start_iter"],
                 min_compression_rate: float = _D["min_compression_rate"],
                 seed: int = _D["seed"],
                 error_feedback: bool = _D["error_feedback"],
                 timeout: Optional[float] = None,
                 comm: Optional[frugal.Communicator] = None) -> None:
        # Checked now by the library, not in the first backward.
        powersgd_options(rank, min_compression_rate, start_iter, seed,
                         error_feedback, "average", "default", timeout)
        self.rank, self.start_iter = rank, start_iter
        self.min_compression_rate = float(min_compression_rate)
        self.seed, self.error_feedback = seed, error_feedback
        self.timeout = timeout
        super().__init__("powersgd-hook", FORMAT, "PowerSGD states", comm)
        self._first_seen: Dict[str, int] = {}  # key -> iteration
        self.iteration = 0  # completed iterations (last buckets launched)
        self._compressed = 0

    def _options(self) -> Tuple[Any, ...]:
        return (self.rank, self.start_iter, self.min_compression_rate,
                self.seed, self.error_feedback)

    # -- the hook ---------------------------------------------------------

    def _state(self, layout: _Layout) -> Tuple[frugal.PowerSGDState, int]:
        """The layout's state and its start_iter (counted in its own
        steps: the iterations before start_iter that it has yet to see)."""
        state = self._known(layout, frugal.PowerSGDState)
        first = self._first_seen.setdefault(layout.key, self.iteration)
        return state, max(0, self.start_iter - first)

    def _check(self, bucket: dist.GradBucket, buffer: torch.Tensor) -> None:
        """A bucket frugal cannot reduce (not float32, not on the CPU)
        fails now, on the autograd thread. Its peers' call waits in the
        queue; a rejection queued behind the earlier buckets' calls makes
        them fail at once instead of waiting for the timeout."""
        if buffer.dtype == torch.float32 and buffer.device.type == "cpu":
            return
        comm = self.comm

        def reject() -> None:
            comm._reject()
        self._waiter.submit([], torch.futures.Future(), reject)
        what = ("dtype %s; frugal reduces float32 — use model.float()"
                % buffer.dtype if buffer.dtype != torch.float32 else
                "on device %s; frugal works on CPU memory" % buffer.device)
        raise frugal.InvalidArgumentError(
            "frugal.torch.powersgd_hook, DDP bucket %d: gradients: %s"
            % (bucket.index(), what))

    def launch(self, bucket: dist.GradBucket) -> torch.futures.Future:
        """Queues the bucket's PowerSGD; the future DDP waits for."""
        buffer = bucket.buffer()
        self._check(bucket, buffer)
        with self._lock:
            layout = self._layout(bucket)
            # The bucket's gradients as views of its buffer (what DDP
            # reads back), each in its parameter's shape.
            grads, offset = {}, 0
            for n, size, p in zip(layout.params, layout.sizes,
                                  bucket.parameters()):
                grads[n] = buffer[offset:offset + size].view(p.shape)
                offset += size
            calls: List[_Call] = []
            for part in self._parts(layout) or [layout]:
                state, start = self._state(part)
                calls.append((state, [grads[n] for n in part.params],
                              start, part))
            if bucket.is_last():
                self.iteration += 1
                self._end_iteration(bucket)
        future: torch.futures.Future = torch.futures.Future()
        self._waiter.submit([], future, lambda: self._run(calls, buffer))
        return future.then(unwrap)

    def _run(self, calls: List[_Call], buffer: torch.Tensor
             ) -> torch.Tensor:
        """On the waiter thread: the bucket's calls, in order."""
        sent = compressed = 0
        for state, tensors, start, layout in calls:
            try:
                stats = frugal.powersgd_allreduce(
                    tensors, state, rank=self.rank, start_iter=start,
                    min_compression_rate=self.min_compression_rate,
                    seed=self.seed, error_feedback=self.error_feedback,
                    op="average", timeout=self.timeout, comm=self.comm)
            except frugal.Error as e:
                raise type(e)("frugal.torch.powersgd_hook, DDP bucket %d "
                              "(%d gradients): %s" % (
                                  layout.index, len(tensors), e)) from e
            sent += stats["wire_bytes_sent"]
            compressed += stats["compressed_tensors"]
        self._count(sent)
        with self._lock:
            self._compressed += compressed
        return buffer

    def _forget(self, key: str) -> None:
        self._first_seen.pop(key, None)

    # -- counts and checkpoints ---------------------------------------------

    @property
    def compressed_tensors(self) -> int:
        """Tensors reduced as rank-r approximations so far (completed
        buckets): 0 while every step is within start_iter."""
        with self._lock:
            return self._compressed

    @property
    def state_keys(self) -> List[str]:
        """The bucket layouts holding a PowerSGD state."""
        return sorted(self._states)

    def state_dict(self, all_ranks: bool = False) -> Dict[str, Any]:
        """This rank's PowerSGD states (each rank has its own residuals).

        all_ranks=True gathers every rank's (collective: call it on every
        rank) so that one file, e.g. written by rank 0, restores all.
        """
        self.wait()
        with self._lock:
            extra = {"options": self._options(), "iteration": self.iteration,
                     "first_seen": dict(self._first_seen)}
        return self._saved(extra, all_ranks)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores this rank's states from state_dict() of this rank, or
        from state_dict(all_ranks=True)."""
        mine = self._own(state)
        if tuple(mine["options"]) != self._options():
            raise frugal.InvalidArgumentError(
                "PowerSGDHookState.load_state_dict: saved with (rank, "
                "start_iter, min_compression_rate, seed, error_feedback) = "
                "%s, this state has %s" % (tuple(mine["options"]),
                                           self._options()))
        self._restore(mine, frugal.PowerSGDState)
        with self._lock:
            self._first_seen = dict(mine["first_seen"])
            self.iteration = mine["iteration"]


def powersgd_hook(state: PowerSGDHookState,
                  bucket: dist.GradBucket
                  ) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: averages the bucket with frugal's PowerSGD.

    Register with ddp.register_comm_hook(PowerSGDHookState(...),
    powersgd_hook).
    """
    return state.launch(bucket)

"""A DDP communication hook that averages each gradient bucket with frugal.

    state = frugal.torch.CommHookState(compression=frugal.Compression.topk())
    ddp.register_comm_hook(state, frugal.torch.comm_hook)

The hook only enqueues: it starts frugal.allreduce_async(op="average") on
the bucket's own buffer (no copy) and returns a future that a waiter
thread completes, so communication overlaps the rest of backward.

With a compression method and dense_vectors (the default), a bucket's
vectors (biases, normalisation weights: tensors of dims <= 1) are averaged
exactly, in one dense allreduce per bucket, and each run of consecutive
matrices between them is compressed by an allreduce of its own, on a view
of the bucket (no copy), so no quantisation scale or top-k selection
spans a vector. That is what frugal.Buckets does by default. Every
compressed allreduce passes its tensors' sizes as segments, so no scale
spans two matrices either (and top-k with scope="per_tensor" selects in
each).

Error feedback keeps one frugal.State per compressed run, keyed, kept
across DDP's bucket rebuild and restored as _layouts.py describes.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

import frugal
from frugal.collectives import allreduce_options
from frugal.torch._layouts import Layout as _Layout
from frugal.torch._layouts import LayoutStates, unwrap

__all__ = ["CommHookState", "comm_hook"]

FORMAT = "frugal.torch.CommHookState/1"
# A run of matrices, or a vector: (offset in the bucket, elements).
Piece = Tuple[int, int]
_SEED_STRIDE = 0x9E3779B97F4A7C15  # buckets get distinct random streams


def _segments(sizes: List[int], numel: int) -> List[int]:
    """The tensors' boundaries in a buffer of `numel` elements: their
    sizes, and whatever DDP's buffer holds past them as one more."""
    rest = numel - sum(sizes)
    return list(sizes) + [rest] if rest > 0 else list(sizes)


class CommHookState(LayoutStates):
    """What frugal.torch.comm_hook needs across steps: the compression,
    per-bucket error feedback, and the waiter thread.

    compression: a frugal.Compression, a string for Compression.parse, or
    None (dense average). error_feedback, decay: residuals of what
    compression dropped, added to the next step's gradient (decay scales
    them). seed: random streams of ternary, QSGD and stochastic rounding.
    timeout: seconds any wait may take (default: the communicator's).
    dense_vectors: with a compression method, parameters of dims <= 1 are
    averaged exactly (False: every bucket is compressed whole).
    Create it after frugal.init(), with the same arguments on every rank.
    """

    def __init__(self, compression: Any = None, *,
                 error_feedback: bool = True, decay: float = 1.0,
                 seed: int = 0, timeout: Optional[float] = None,
                 dense_vectors: bool = True,
                 comm: Optional[frugal.Communicator] = None) -> None:
        self.compression = frugal.Compression.of(compression)
        # Every argument checked now, as frugal.allreduce would check it,
        # not in the first backward.
        allreduce_options(self.compression, "average", "auto", seed,
                          error_feedback, timeout)
        frugal.State(decay)
        if not isinstance(dense_vectors, bool):
            raise frugal.InvalidArgumentError(
                "dense_vectors: expected a bool, got %s"
                % type(dense_vectors).__name__)
        self.dense_vectors = dense_vectors and self.compression.compressed
        super().__init__("comm-hook", FORMAT, "error-feedback residuals",
                         comm)
        self.error_feedback = error_feedback
        self.decay, self.seed, self.timeout = decay, seed, timeout
        self._stateful = error_feedback and self.compression.compressed

    # -- the hook ---------------------------------------------------------

    def _state(self, layout: _Layout) -> Optional[frugal.State]:
        if not self._stateful:
            return None
        return self._known(layout, lambda: frugal.State(self.decay))

    def _allreduce(self, buffer: torch.Tensor, layout: _Layout,
                   dense: bool = False) -> Any:
        """Starts the average of `buffer`, compressed unless `dense`."""
        # A distinct random stream per bucket, and per run of a bucket.
        stream = layout.index * _SEED_STRIDE + int(layout.key[-16:], 16)
        try:
            if dense:
                return frugal.allreduce_async(
                    buffer, op="average", timeout=self.timeout,
                    comm=self.comm)
            return frugal.allreduce_async(
                buffer, compression=self.compression, op="average",
                state=self._state(layout),
                error_feedback=self.error_feedback,
                seed=(self.seed + stream) % 2 ** 64,
                timeout=self.timeout, comm=self.comm,
                segments=_segments(layout.sizes, buffer.numel()))
        except frugal.Error as e:
            raise type(e)("frugal.torch.comm_hook, DDP bucket %d (%d "
                          "gradients, %s): %s" % (
                              layout.index, len(layout.sizes),
                              buffer.dtype, e)) from e

    def _split(self, bucket: dist.GradBucket, layout: _Layout
               ) -> Tuple[List[Tuple[_Layout, int]], List[Piece]]:
        """The bucket's compressed runs (each a layout of its own and its
        offset) and its vectors, which travel dense."""
        if not self.dense_vectors:
            return [(layout, 0)], []
        runs: List[Tuple[List[int], List[int], int]] = []
        vectors: List[Piece] = []
        offset, run_open = 0, False
        for n, size, p in zip(layout.params, layout.sizes,
                              bucket.parameters()):
            if p.dim() <= 1:
                vectors.append((offset, size))
                run_open = False
            else:
                if not run_open:
                    runs.append(([], [], offset))
                    run_open = True
                runs[-1][0].append(n)
                runs[-1][1].append(size)
            offset += size
        if not vectors:
            return [(layout, 0)], []
        return [(_Layout(layout.index, params, sizes), at)
                for params, sizes, at in runs], vectors

    def _launch_vectors(self, buffer: torch.Tensor, layout: _Layout,
                        vectors: List[Piece]) -> Tuple[Any, Any]:
        """One dense average of the bucket's vectors, copied out and back
        (they are a small part of a model)."""
        flat = torch.cat([buffer[at:at + size] for at, size in vectors])
        handle = self._allreduce(flat, layout, dense=True)

        def copy_back() -> None:
            done = 0
            for at, size in vectors:
                buffer[at:at + size].copy_(flat[done:done + size])
                done += size
        return handle, copy_back

    def launch(self, bucket: dist.GradBucket) -> torch.futures.Future:
        """Starts the bucket's allreduces; the future DDP waits for."""
        future: torch.futures.Future = torch.futures.Future()
        buffer = bucket.buffer()
        handles: List[Any] = []
        thens: List[Any] = []
        with self._lock:
            layout = self._layout(bucket)
            runs, vectors = self._split(bucket, layout)
            for run, at in runs:
                parts = self._parts(run) if self._stateful else None
                if parts:
                    more, then = self._launch_parts(bucket, layout, run,
                                                    parts)
                    handles += more
                    thens.append(then)
                else:
                    view = buffer[at:at + sum(run.sizes)]
                    handles.append(self._allreduce(view, run))
            if vectors:
                handle, then = self._launch_vectors(buffer, layout,
                                                    vectors)
                handles.append(handle)
                thens.append(then)
            if bucket.is_last():
                self._end_iteration(bucket)

        def finish() -> torch.Tensor:
            for then in thens:
                then()
            return buffer
        self._waiter.submit(handles, future, self._counted(handles, finish))
        return future.then(unwrap)

    def _counted(self, handles: List[Any], then: Any) -> Any:
        """then(), after adding what the handles sent to wire_bytes_sent
        (run by the waiter once every handle has succeeded)."""
        def count_then() -> torch.Tensor:
            self._count(sum(h.stats()["wire_bytes_sent"] for h in handles))
            return then()
        return count_then

    def _launch_parts(self, bucket: dist.GradBucket, layout: _Layout,
                      run: _Layout, parts: List[_Layout]
                      ) -> Tuple[List[Any], Any]:
        """Reduces `run` (of the bucket with `layout`) as the known
        layouts `parts` it is made of, each with its own residuals."""
        grads = dict(zip(layout.params, bucket.gradients()))
        handles, copies = [], []
        for part in parts:
            flat = torch.cat([grads[n].reshape(-1) for n in part.params])
            handles.append(self._allreduce(flat, part))
            copies.append((part, flat))

        def copy_back() -> None:
            for part, flat in copies:
                offset = 0
                for n, size in zip(part.params, part.sizes):
                    grads[n].view(-1).copy_(flat[offset:offset + size])
                    offset += size
        return handles, copy_back

    # -- checkpoints --------------------------------------------------------

    @property
    def residual_keys(self) -> List[str]:
        """The bucket layouts holding error-feedback state."""
        return sorted(self._states)

    def state_dict(self, all_ranks: bool = False) -> Dict[str, Any]:
        """This rank's error-feedback residuals (each rank has its own).

        all_ranks=True gathers every rank's (collective: call it on every
        rank) so that one file, e.g. written by rank 0, restores all.
        """
        return self._saved({"compression": repr(self.compression),
                            "dense_vectors": self.dense_vectors}, all_ranks)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores this rank's residuals from state_dict() of this rank,
        or from state_dict(all_ranks=True)."""
        mine = self._own(state)
        if mine["compression"] != repr(self.compression):
            raise frugal.InvalidArgumentError(
                "CommHookState.load_state_dict: saved with %s, this state "
                "uses %s" % (mine["compression"], self.compression))
        if mine.get("dense_vectors", False) != self.dense_vectors:
            raise frugal.InvalidArgumentError(
                "CommHookState.load_state_dict: saved with dense_vectors=%s,"
                " this state has %s (the residuals cover other tensors)"
                % (mine.get("dense_vectors", False), self.dense_vectors))
        self._restore(mine, lambda: frugal.State(self.decay))


def comm_hook(state: CommHookState,
              bucket: dist.GradBucket
              ) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: averages the bucket over frugal's ranks.

    Register with ddp.register_comm_hook(CommHookState(...), comm_hook).
    """
    return state.launch(bucket)

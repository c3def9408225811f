"""What frugal's DDP hooks share: one state per bucket layout.

A bucket is keyed by its index, its size and which parameters it holds,
numbered in the order DDP handed them over in the first iteration (a
function of the model and DDP's settings only). DDP 1.13 reduces one
bucket of all parameters in its first iteration and then rebuilds its
buckets: a layout that is gone takes its state with it at the end of the
next iteration, never applied to other parameters. When a bucket is
exactly a union of known layouts, as is the first bucket after a restart
from a checkpoint, the hook reduces it as those layouts, so a resumed run
computes what an uninterrupted one does. Each rank saves and restores its
own states.
"""
import hashlib
import threading
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

import frugal
from frugal.torch._checkpoint import own_entry
from frugal.torch._waiter import Waiter

__all__ = ["Layout", "LayoutStates", "unwrap"]


class Layout:
    """One bucket's place: its key and its parameters' numbers and sizes."""

    def __init__(self, index: int, params: List[int],
                 sizes: List[int]) -> None:
        self.index, self.params, self.sizes = index, params, sizes
        digest = hashlib.sha1(",".join(map(str, params)).encode())
        self.key = "%d:%d:%s" % (index, sum(sizes), digest.hexdigest()[:16])


class LayoutStates:
    """The states of a hook's bucket layouts, its waiter thread and its
    byte count; `kind` names the hook in messages and checkpoints."""

    def __init__(self, kind: str, fmt: str, what: str,
                 comm: Optional[frugal.Communicator]) -> None:
        self.comm = frugal.get_communicator() if comm is None else comm
        self._kind, self._format, self._what = kind, fmt, what
        self._lock = threading.Lock()
        self._states: Dict[str, Any] = {}
        self._layouts: Dict[str, Layout] = {}
        self._restored: set = set()
        self._seen: set = set()
        self._numbers: Dict[int, int] = {}  # id(parameter) -> number
        self._keep: List[torch.Tensor] = []  # so that ids stay unique
        self._waiter = Waiter("frugal-" + kind)
        self.bucket_count = 0  # DDP's buckets in the last iteration
        self._wire_bytes = 0

    # -- layouts ------------------------------------------------------------

    def _layout(self, bucket: dist.GradBucket) -> Layout:
        numbers = []
        for p in bucket.parameters():
            n = self._numbers.get(id(p))
            if n is None:
                n = self._numbers[id(p)] = len(self._numbers)
                self._keep.append(p)
            numbers.append(n)
        sizes = [g.numel() for g in bucket.gradients()]
        return Layout(bucket.index(), numbers, sizes)

    def _known(self, layout: Layout, make: Callable[[], Any]) -> Any:
        """The layout's state, made on first sight; marks it in use."""
        self._seen.add(layout.key)
        if layout.key not in self._states:
            self._states[layout.key] = make()
            self._layouts[layout.key] = layout
        return self._states[layout.key]

    def _parts(self, layout: Layout) -> Optional[List[Layout]]:
        """Known layouts that make up exactly this one, if any."""
        if layout.key in self._states or not self._layouts:
            return None
        mine = set(layout.params)
        parts = [k for k in self._layouts.values() if set(k.params) <= mine]
        covered = set().union(*(k.params for k in parts))
        if covered != mine or sum(len(k.params) for k in parts) != len(mine):
            return None  # not exactly a union of disjoint known buckets
        return sorted(parts, key=lambda k: k.index)

    def _end_iteration(self, bucket: dist.GradBucket) -> None:
        """After the last bucket: drops layouts DDP no longer uses."""
        self.bucket_count = bucket.index() + 1
        gone = [k for k in self._states if k not in self._seen]
        lost = [k for k in gone if k in self._restored]
        if lost:
            warnings.warn("frugal.torch.%s: %d restored %s matched no DDP "
                          "bucket and were dropped"
                          % (type(self).__name__, len(lost), self._what))
        for k in gone:
            del self._states[k]
            del self._layouts[k]
            self._restored.discard(k)
            self._forget(k)
        self._seen = set()

    def _forget(self, key: str) -> None:
        """What a subclass keeps per layout besides its state."""

    def _count(self, sent: int) -> None:
        with self._lock:
            self._wire_bytes += sent

    # -- synchronisation ----------------------------------------------------

    @property
    def error(self) -> Optional[BaseException]:
        """The last error a bucket's reduction raised (DDP reports it as a
        RuntimeError carrying this one's message)."""
        return self._waiter.error

    @property
    def wire_bytes_sent(self) -> int:
        """Bytes this rank has sent so far (completed buckets; call
        wait() first for an exact count)."""
        with self._lock:
            return self._wire_bytes

    def wait(self) -> None:
        """Returns once every bucket started so far has completed."""
        self._waiter.wait_idle()

    def close(self) -> None:
        """Waits, then stops the waiter thread (it restarts on demand)."""
        self._waiter.close()

    # -- checkpoints ----------------------------------------------------------

    def _saved(self, extra: Dict[str, Any],
               all_ranks: bool) -> Dict[str, Any]:
        """This rank's states and layouts plus `extra`; with all_ranks,
        every rank's (a collective call)."""
        self.wait()
        with self._lock:
            mine = dict(extra, rank=self.comm.rank,
                        world_size=self.comm.size,
                        states={k: s.save() for k, s in self._states.items()},
                        layouts={k: (v.index, v.params, v.sizes)
                                 for k, v in self._layouts.items()})
        if not all_ranks:
            return dict(mine, format=self._format)
        return {"format": self._format,
                "ranks": frugal.allgather_object(mine, comm=self.comm)}

    def _own(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """This rank's entry of a state_dict(), or InvalidArgumentError."""
        return own_entry(state, self._format, self.comm.rank, self.comm.size,
                         type(self).__name__)

    def _restore(self, mine: Dict[str, Any], make: Callable[[], Any]) -> None:
        """Replaces the states with the saved ones (made by make())."""
        if set(mine["states"]) != set(mine["layouts"]):
            raise frugal.InvalidArgumentError(
                "%s.load_state_dict: the saved states and layouts do not "
                "match (a damaged state_dict?)" % type(self).__name__)
        self.wait()
        states = {}
        for key, blob in mine["states"].items():
            s = make()
            s.restore(blob)
            states[key] = s
        with self._lock:
            self._states = states
            self._layouts = {k: Layout(*v) for k, v in mine["layouts"].items()}
            self._restored = set(self._states)
            self._seen = set()


def unwrap(future: torch.futures.Future) -> Any:
    return future.wait()  # raises the bucket's error, if any

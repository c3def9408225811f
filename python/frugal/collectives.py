"""Collectives on torch CPU tensors and numpy arrays, in place.

A rank that rejects its own arguments (wrong dtype, bad parameter, ...)
raises InvalidArgumentError, but first enters a barrier that its peers'
collective does not match, so that they fail at once with MismatchError
instead of waiting for the timeout.
"""

import contextlib
import pickle
from typing import Any, Dict, Iterator, List, Optional, Sequence

from frugal._ext import ext
from frugal._tensors import as_buffer
from frugal.compression import Compression, CompressionLike
from frugal.errors import InvalidArgumentError
from frugal.runtime import Communicator, get_communicator

__all__ = ["allreduce", "allreduce_async", "Handle", "broadcast", "barrier",
           "allgather_object", "State"]

State = ext.State

_STATS = ("algorithm", "wire_bytes_sent", "encode_seconds", "comm_seconds",
          "decode_seconds", "non_finite_skipped", "non_finite_zeroed")


def _comm(comm: Optional[Communicator]) -> Communicator:
    if comm is None:
        return get_communicator()
    if not isinstance(comm, Communicator):
        raise InvalidArgumentError(
            f"comm: expected a frugal.Communicator, got {type(comm).__name__}")
    return comm


@contextlib.contextmanager
def _rejecting(comm: Communicator) -> Iterator[None]:
    """Lets the peers know when this rank rejects its arguments."""
    try:
        yield
    except Exception:
        # Whatever stopped this rank before the collective, its peers are
        # in it or about to be.
        comm._reject()
        raise


def _check_timeout(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentError(
            f"timeout: expected seconds as a number, got "
            f"{type(timeout).__name__}")
    return float(timeout)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or \
            not 0 <= seed < 2 ** 64:
        raise InvalidArgumentError(
            f"seed: expected an int in [0, 2**64), got {seed!r}")
    return seed


def allreduce_options(compression: CompressionLike, op: str, algorithm: str,
                      seed: int, error_feedback: bool,
                      timeout: Optional[float],
                      non_finite: str = "default") -> Any:
    """The C++ options, checked; shared with Buckets."""
    c = Compression.of(compression)
    for name, value in (("op", op), ("algorithm", algorithm),
                        ("non_finite", non_finite)):
        if not isinstance(value, str):
            raise InvalidArgumentError(
                f"{name}: expected a str, got {type(value).__name__}")
    if not isinstance(error_feedback, bool):
        raise InvalidArgumentError(
            f"error_feedback: expected a bool, got "
            f"{type(error_feedback).__name__}")
    return ext.AllreduceOptions(c._config, op, algorithm, _check_seed(seed),
                                error_feedback, _check_timeout(timeout),
                                non_finite)


def check_segments(segments: Optional[Sequence[int]]) -> List[int]:
    """The tensors' element counts as a list of ints (the library checks
    that each is positive and that they add up to the buffer)."""
    if segments is None:
        return []
    if isinstance(segments, (str, bytes)) or \
            not hasattr(segments, "__iter__"):
        raise InvalidArgumentError(
            f"segments: expected a sequence of element counts, got "
            f"{type(segments).__name__}")
    counts = list(segments)
    for i, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidArgumentError(
                f"segments: entry {i} must be an element count (an int "
                f">= 0), got {n!r}")
    return counts


def _prepare(tensor: Any, compression: CompressionLike, op: str,
             state: Optional[State], error_feedback: bool, algorithm: str,
             seed: int, timeout: Optional[float]):
    array = as_buffer(tensor, "tensor")
    options = allreduce_options(compression, op, algorithm, seed,
                                error_feedback, timeout)
    if state is not None and not isinstance(state, State):
        raise InvalidArgumentError(
            f"state: expected a frugal.State, got {type(state).__name__}")
    if state is None and error_feedback and Compression.of(compression) \
            .compressed:
        raise InvalidArgumentError(
            "state: a compressed allreduce with error feedback keeps what "
            "compression dropped in a state: pass state=frugal.State() (one "
            "per buffer, kept across steps) or error_feedback=False")
    return array, options


def allreduce(tensor: Any, *, compression: CompressionLike = None,
              op: str = "sum", state: Optional[State] = None,
              error_feedback: bool = True, algorithm: str = "auto",
              seed: int = 0, timeout: Optional[float] = None,
              comm: Optional[Communicator] = None,
              segments: Optional[Sequence[int]] = None) -> Any:
    """Sums (op="sum") or averages ("average") `tensor` over all ranks.

    In place: the result is in `tensor`'s memory, bit-identical on every
    rank, and `tensor` is returned. compression: a Compression, a string
    for Compression.parse, or None (dense). A compressed method with
    error_feedback needs a State per buffer. segments: when `tensor` holds
    several tensors end to end, their element counts (summing to its
    size): no quantization scale, and with topk scope="per_tensor" no
    top-k selection, covers two of them; every rank passes the same, and
    a State is bound to them. Releases the GIL while it communicates.
    """
    c = _comm(comm)
    with _rejecting(c):
        array, options = _prepare(tensor, compression, op, state,
                                  error_feedback, algorithm, seed, timeout)
        counts = check_segments(segments)
    ext.allreduce(c, array, options, state, counts)
    return tensor


class Handle:
    """An allreduce running in the background (see allreduce_async)."""

    __slots__ = ("_handle", "_tensor")

    def __init__(self, handle: Any, tensor: Any) -> None:
        self._handle = handle
        self._tensor = tensor

    def done(self) -> bool:
        """True once it has finished, successfully or not."""
        return self._handle.done()

    def wait(self) -> Any:
        """Waits (GIL released), raises its error if any, returns the
        tensor."""
        self._handle.wait()
        return self._tensor

    def stats(self) -> Dict[str, Any]:
        """What the allreduce did, once wait() has returned: algorithm
        (the one auto chose), wire_bytes_sent (the bytes this rank sent,
        agreement included), encode/comm/decode_seconds,
        non_finite_skipped and non_finite_zeroed."""
        s = self._handle.stats()
        return {name: getattr(s, name) for name in _STATS}


def allreduce_async(tensor: Any, *, compression: CompressionLike = None,
                    op: str = "sum", state: Optional[State] = None,
                    error_feedback: bool = True, algorithm: str = "auto",
                    seed: int = 0, timeout: Optional[float] = None,
                    comm: Optional[Communicator] = None,
                    segments: Optional[Sequence[int]] = None) -> Handle:
    """Starts allreduce() on the communicator's background thread.

    Until the handle is done, `tensor` and `state` belong to the allreduce
    (the handle keeps them alive). Asynchronous allreduces run in
    submission order, which every rank must share; blocking collectives
    on the same communicator are refused until they are done.
    """
    c = _comm(comm)
    with _rejecting(c):
        array, options = _prepare(tensor, compression, op, state,
                                  error_feedback, algorithm, seed, timeout)
        counts = check_segments(segments)
    return Handle(ext.allreduce_async(c, array, options, state, counts),
                  tensor)


def broadcast(tensor: Any, root: int = 0, *, timeout: Optional[float] = None,
              comm: Optional[Communicator] = None) -> Any:
    """Copies rank `root`'s `tensor` into every rank's, in place.

    Any dtype (bytes are copied), contiguous and writeable.
    """
    c = _comm(comm)
    with _rejecting(c):
        array = as_buffer(tensor, "tensor", float32=False)
        if isinstance(root, bool) or not isinstance(root, int) or \
                not 0 <= root < c.size:
            raise InvalidArgumentError(
                f"root: must be a rank in [0, {c.size}), got {root!r}")
        timeout = _check_timeout(timeout)
    ext.broadcast(c, array, root, timeout)
    return tensor


def barrier(*, timeout: Optional[float] = None,
            comm: Optional[Communicator] = None) -> None:
    """Returns once every rank has entered it."""
    c = _comm(comm)
    ext.barrier(c, _check_timeout(timeout))


def allgather_object(obj: Any, *, timeout: Optional[float] = None,
                     comm: Optional[Communicator] = None) -> List[Any]:
    """Every rank's `obj` (pickled), in rank order.

    Unpickles what peers send: use it among trusted ranks only, as
    torch.distributed.all_gather_object.
    """
    c = _comm(comm)
    with _rejecting(c):
        try:
            mine = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            raise InvalidArgumentError(f"obj: cannot be pickled: {e}") from e
        timeout = _check_timeout(timeout)
    return [pickle.loads(b) for b in ext.allgather_bytes(c, mine, timeout)]

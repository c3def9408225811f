"""Compressed reduce-scatter and allgather, for sharded optimizers.

    offset, count = frugal.shard_range(grad.numel())   # this rank's part
    shard = grad[offset:offset + count].clone()
    frugal.reduce_scatter(grad, shard, compression="onebit",
                          op="average", state=rs_state)
    ...                                    # update the owned parameters
    frugal.allgather(params[offset:offset + count], params)

The two phases of the two-phase compressed allreduce as calls of their
own: reduce_scatter leaves each rank the sum (or mean) of its shard,
allgather sends every rank's shard to every rank. Each keeps its own
error feedback in its own State; reduce_scatter into a buffer's own shard
followed by allgather of it equals allreduce(algorithm="two_phase") bit
for bit. compression None is the exact dense form. See docs/python.md.
"""

from typing import Any, Optional, Sequence, Tuple

from frugal._ext import ext
from frugal._tensors import as_buffer
from frugal.collectives import (State, _comm, _rejecting, allreduce_options,
                                check_segments)
from frugal.compression import Compression, CompressionLike
from frugal.errors import InvalidArgumentError
from frugal.runtime import Communicator

__all__ = ["shard_range", "reduce_scatter", "allgather"]


def shard_range(count: int, *, rank: Optional[int] = None,
                size: Optional[int] = None,
                comm: Optional[Communicator] = None) -> Tuple[int, int]:
    """(offset, count) of the shard of a `count`-element buffer that
    `rank` of `size` owns (default: this rank of the communicator): the
    even split in rank order, sizes differing by at most one, the larger
    first."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidArgumentError(
            f"count: expected an int >= 0, got {count!r}")
    if rank is None or size is None:
        c = _comm(comm)
        rank = c.rank if rank is None else rank
        size = c.size if size is None else size
    for name, value in (("rank", rank), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(
                f"{name}: expected an int, got {value!r}")
    offset, n = ext.reduce_scatter_shard(count, size, rank)
    return int(offset), int(n)


def _options(compression: CompressionLike, op: str,
             state: Optional[State], error_feedback: bool, algorithm: str,
             seed: int, timeout: Optional[float], non_finite: str) -> Any:
    options = allreduce_options(compression, op, algorithm, seed,
                                error_feedback, timeout, non_finite)
    if state is not None and not isinstance(state, State):
        raise InvalidArgumentError(
            f"state: expected a frugal.State, got {type(state).__name__}")
    if state is None and error_feedback and \
            Compression.of(compression).compressed:
        raise InvalidArgumentError(
            "state: compressed with error feedback keeps what compression "
            "dropped in a state: pass state=frugal.State() (one per buffer "
            "and collective, kept across steps) or error_feedback=False")
    return options


def reduce_scatter(tensor: Any, shard: Any, *,
                   compression: CompressionLike = None, op: str = "sum",
                   state: Optional[State] = None,
                   error_feedback: bool = True, algorithm: str = "auto",
                   seed: int = 0, timeout: Optional[float] = None,
                   non_finite: str = "default",
                   comm: Optional[Communicator] = None,
                   segments: Optional[Sequence[int]] = None) -> Any:
    """Sums (or averages) every rank's `tensor` into this rank's `shard`.

    `shard` holds shard_range(tensor size) elements, float32 and
    contiguous; it may be a view of `tensor`'s own part. `tensor` is used
    as scratch (its contents afterwards are unspecified). compression:
    the quantizers (fp16, bf16, onebit, ternary, qsgd) or None (dense);
    top-k is refused. A rank whose arguments are bad raises
    InvalidArgumentError and its peers MismatchError. Returns `shard`.
    """
    c = _comm(comm)
    with _rejecting(c):
        source = as_buffer(tensor, "tensor")
        target = as_buffer(shard, "shard")
        options = _options(compression, op, state, error_feedback,
                           algorithm, seed, timeout, non_finite)
        counts = check_segments(segments)
    ext.reduce_scatter(c, source, target, options, state, counts)
    return shard


def allgather(shard: Any, tensor: Any, *,
              compression: CompressionLike = None,
              state: Optional[State] = None, error_feedback: bool = True,
              algorithm: str = "auto", seed: int = 0,
              timeout: Optional[float] = None, non_finite: str = "default",
              comm: Optional[Communicator] = None,
              segments: Optional[Sequence[int]] = None) -> Any:
    """Gathers every rank's `shard` (compressed) into every rank's
    `tensor`, bit-identical on every rank.

    `shard` holds this rank's shard_range(tensor size) elements and may
    be a view of `tensor`'s own part; its owner, too, receives the
    decoded values. Returns `tensor`.
    """
    c = _comm(comm)
    with _rejecting(c):
        source = as_buffer(shard, "shard")
        target = as_buffer(tensor, "tensor")
        options = _options(compression, "sum", state, error_feedback,
                           algorithm, seed, timeout, non_finite)
        counts = check_segments(segments)
    ext.allgather(c, source, target, options, state, counts)
    return tensor

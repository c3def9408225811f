"""PowerSGD (Vogels et al., 2019) on a list of float32 tensors, in place.

    state = frugal.PowerSGDState()         # one per tensor list, per rank
    frugal.powersgd_allreduce(grads, state, rank=2)

Each tensor is viewed as a matrix of its first dimension by the product
of the others; it is replaced by the rank-r approximation of the
(error-compensated) average over all ranks, or by the exact average when
compressing it would not pay (every 1-D tensor). The keyword defaults are
the library's own (frugal/collectives/powersgd.hpp). See docs/powersgd.md.
"""

from typing import Any, Dict, List, Optional, Sequence

from frugal._ext import ext
from frugal._tensors import as_buffer
from frugal.collectives import (_check_seed, _check_timeout, _comm,
                                _rejecting)
from frugal.errors import InvalidArgumentError
from frugal.runtime import Communicator

__all__ = ["PowerSGDState", "powersgd_allreduce", "powersgd_compresses",
           "POWERSGD_DEFAULTS"]

PowerSGDState = ext.PowerSGDState

# The C++ PowerSgdOptions' defaults: rank, min_compression_rate,
# start_iter, seed, error_feedback, op, non_finite.
POWERSGD_DEFAULTS: Dict[str, Any] = dict(ext.powersgd_defaults())
_D = POWERSGD_DEFAULTS


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not low <= value < high:
        raise InvalidArgumentError(
            f"{name}: expected an int in [{low}, {high}), got {value!r}")
    return value


def powersgd_options(rank: int = _D["rank"],
                     min_compression_rate: float = _D["min_compression_rate"],
                     start_iter: int = _D["start_iter"],
                     seed: int = _D["seed"],
                     error_feedback: bool = _D["error_feedback"],
                     op: str = _D["op"], non_finite: str = _D["non_finite"],
                     timeout: Optional[float] = None) -> Any:
    """The C++ options, checked by the library (InvalidArgumentError
    naming the argument); shared with frugal.torch's hook."""
    _check_int("rank", rank, -2 ** 31, 2 ** 31)
    _check_int("start_iter", start_iter, 0, 2 ** 64)
    if isinstance(min_compression_rate, bool) or \
            not isinstance(min_compression_rate, (int, float)):
        raise InvalidArgumentError(
            f"min_compression_rate: expected a number, got "
            f"{type(min_compression_rate).__name__}")
    if not isinstance(error_feedback, bool):
        raise InvalidArgumentError(
            f"error_feedback: expected a bool, got "
            f"{type(error_feedback).__name__}")
    for name, value in (("op", op), ("non_finite", non_finite)):
        if not isinstance(value, str):
            raise InvalidArgumentError(
                f"{name}: expected a str, got {type(value).__name__}")
    return ext.PowerSGDOptions(rank, float(min_compression_rate), start_iter,
                               _check_seed(seed), error_feedback, op,
                               non_finite, _check_timeout(timeout))


def powersgd_compresses(shape: Sequence[int], *, rank: int = _D["rank"],
                        min_compression_rate: float =
                        _D["min_compression_rate"]) -> bool:
    """Whether a tensor of `shape` is sent as rank-r factors (else it is
    averaged exactly)."""
    dims = [int(d) for d in shape]
    rows = dims[0] if dims else 1
    cols = 1
    for d in dims[1:]:
        cols *= d
    options = powersgd_options(rank, min_compression_rate)
    return ext.powersgd_compresses(rows, cols, options)


def powersgd_allreduce(tensors: Sequence[Any], state: PowerSGDState, *,
                       rank: int = _D["rank"],
                       min_compression_rate: float =
                       _D["min_compression_rate"],
                       start_iter: int = _D["start_iter"],
                       seed: int = _D["seed"],
                       error_feedback: bool = _D["error_feedback"],
                       op: str = _D["op"],
                       non_finite: str = _D["non_finite"],
                       timeout: Optional[float] = None,
                       comm: Optional[Communicator] = None
                       ) -> Dict[str, Any]:
    """Reduces `tensors` (float32, CPU, contiguous, any shape) with
    PowerSGD, in place: afterwards every rank holds the same bits.

    rank: the approximation's rank r (>= 1). start_iter: steps of `state`
    reduced exactly before compression starts. op: "average" or "sum".
    Every rank passes the same shapes and options and a state at the same
    step. Releases the GIL while it communicates. Returns what the step
    did: dense_step, compressed_tensors, wire_bytes_sent,
    non_finite_skipped, non_finite_zeroed.
    """
    c = _comm(comm)
    with _rejecting(c):
        if isinstance(tensors, (str, bytes)) or \
                not isinstance(tensors, Sequence):
            raise InvalidArgumentError(
                f"tensors: expected a list of tensors, got "
                f"{type(tensors).__name__}")
        arrays: List[Any] = [as_buffer(t, f"tensors[{i}]")
                             for i, t in enumerate(tensors)]
        if not isinstance(state, PowerSGDState):
            raise InvalidArgumentError(
                f"state: expected a frugal.PowerSGDState, got "
                f"{type(state).__name__}")
        options = powersgd_options(rank, min_compression_rate, start_iter,
                                   seed, error_feedback, op, non_finite,
                                   timeout)
        batch = ext.PowerSGDBatch(arrays)
    return dict(ext.powersgd_allreduce(c, batch, state, options))

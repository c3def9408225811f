"""Autotune: compression = auto for frugal.Buckets (and so for
frugal.torch.DistributedOptimizer), GradientBuckets' autotune in C++.

Each compressed bucket tries the candidate settings online, measures what
each costs on this job's links, and keeps the cheapest; every rank takes
the same decisions (each cost is the max over the ranks). Schedule, in the
buckets' reduced steps: steps 1..warmup run candidates[0]; then a trial
runs candidate 0, 1, ... for trial_steps steps each on every bucket; at
its end each bucket keeps the earliest candidate whose median cost is
within (1 + margin) of the lowest (densest first: a sparser setting must
be clearly cheaper to be worth its accuracy); with retune > 0 a new trial
starts retune steps after the end of the last. A change of candidate
flushes the residuals into the next input: no gradient mass is lost.

Parameters left unset take the C++ library's defaults, read through the
extension; candidates=None is dense, fp16 and ternary.
"""

from typing import Any, Callable, Optional, Sequence, Tuple, Union

from frugal._ext import ext
from frugal.compression import Compression, CompressionLike
from frugal.errors import InvalidArgumentError

__all__ = ["Autotune", "AutotuneLike"]

CostFunction = Callable[[int, int, float], float]


def _steps(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not least <= value < 2 ** 63:
        raise InvalidArgumentError(
            f"autotune.{name}: must be an int >= {least}, got {value!r}")
    return value


def _candidates(value: Optional[Sequence[CompressionLike]]
                ) -> Optional[Tuple[Compression, ...]]:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Compression)) or \
            not hasattr(value, "__iter__"):
        raise InvalidArgumentError(
            "autotune.candidates: expected a list of compressions (a "
            "frugal.Compression or a str such as 'topk:density=0.01'), got "
            f"{type(value).__name__}")
    out = []
    for i, c in enumerate(value):
        try:
            out.append(Compression.of(c))
        except InvalidArgumentError as e:
            raise InvalidArgumentError(
                f"autotune.candidates: candidate {i}: {e}") from e
    if not out:
        raise InvalidArgumentError(
            "autotune.candidates: empty (None takes the defaults: dense, "
            "fp16, ternary)")
    return tuple(out)


class Autotune:
    """Immutable compression = auto options: candidates (a list of
    compressions as Buckets' compression= takes them, densest first, at
    most 16; None: dense, fp16, ternary), warmup (steps >= 0), trial_steps
    (>= 1), retune (steps >= 0; 0: never), margin (finite, >= 0).

    cost: optional callable(bucket, candidate, seconds) -> float, the cost
    of bucket `bucket` at a trial step where it ran candidate `candidate`
    (an index into the candidates) and its allreduce took `seconds` on
    this rank; the measured seconds when None. Called by finish(); it must
    return a finite float >= 0: anything else, or an exception, makes that
    finish() raise InvalidArgumentError naming autotune.cost on every rank.

    Out-of-range values raise InvalidArgumentError naming the field
    (autotune.margin, ...)."""

    __slots__ = ("_options", "_candidates")

    def __init__(self, candidates: Optional[Sequence[CompressionLike]] = None,
                 warmup: Optional[int] = None,
                 trial_steps: Optional[int] = None,
                 retune: Optional[int] = None,
                 margin: Optional[float] = None, *,
                 cost: Optional[CostFunction] = None) -> None:
        defaults = ext.AutotuneOptions.defaults()
        listed = _candidates(candidates)
        if margin is not None and (isinstance(margin, bool) or
                                   not isinstance(margin, (int, float))):
            raise InvalidArgumentError(
                f"autotune.margin: expected a number, got {margin!r}")
        if cost is not None and not callable(cost):
            raise InvalidArgumentError(
                f"autotune.cost: expected a callable or None, got "
                f"{type(cost).__name__}")
        options = ext.AutotuneOptions(
            [] if listed is None else [c._config for c in listed],
            defaults.warmup if warmup is None else
            _steps("warmup", warmup, 0),
            defaults.trial_steps if trial_steps is None else
            _steps("trial_steps", trial_steps, 1),
            defaults.retune if retune is None else
            _steps("retune", retune, 0),
            defaults.margin if margin is None else float(margin), cost)
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_candidates", listed)

    @staticmethod
    def of(value: "AutotuneLike") -> Optional["Autotune"]:
        """None or False (off), True (the defaults) or an Autotune."""
        if value is None or value is False:
            return None
        if value is True:
            return Autotune()
        if isinstance(value, Autotune):
            return value
        raise InvalidArgumentError(
            f"autotune: expected None, a bool or a frugal.Autotune, got "
            f"{type(value).__name__}")

    @property
    def candidates(self) -> Optional[Tuple[Compression, ...]]:
        """The candidates given, or None for the library's defaults."""
        return self._candidates

    @property
    def warmup(self) -> int:
        return int(self._options.warmup)

    @property
    def trial_steps(self) -> int:
        return int(self._options.trial_steps)

    @property
    def retune(self) -> int:
        return int(self._options.retune)

    @property
    def margin(self) -> float:
        return float(self._options.margin)

    @property
    def cost(self) -> Optional[CostFunction]:
        return self._options.cost

    def _key(self) -> Tuple[Any, ...]:
        return (self.candidates, self.warmup, self.trial_steps, self.retune,
                self.margin, self.cost)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Autotune):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        candidates = None if self.candidates is None else \
            list(self.candidates)
        text = "Autotune(%r, warmup=%r, trial_steps=%r, retune=%r, " \
            "margin=%r" % (candidates, self.warmup, self.trial_steps,
                           self.retune, self.margin)
        return text + ("" if self.cost is None else
                       ", cost=%r" % (self.cost,)) + ")"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Autotune is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Autotune is immutable")

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, self._key())


def _rebuild(candidates: Optional[Tuple[Compression, ...]], warmup: int,
             trial_steps: int, retune: int, margin: float,
             cost: Optional[CostFunction]) -> Autotune:
    return Autotune(candidates, warmup, trial_steps, retune, margin,
                    cost=cost)


AutotuneLike = Union[Autotune, bool, None]

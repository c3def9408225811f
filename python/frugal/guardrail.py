"""Guardrail: the accuracy guardrail of frugal.Buckets (and so of
frugal.torch.DistributedOptimizer), GradientBuckets' in C++.

Each compressed bucket watches ratio = ||residual|| / ||input|| (norms
over every rank's vectors together, smoothed by an EMA with weight
`smoothing`), moves one rung up its ladder of denser settings when that
passes `upper` (at most once per `cooldown` steps), and one rung down when
it has stayed below `lower` for `patience` steps. The ladder: topk density
(or k) x4 per rung while <= 0.25, then dense; qsgd bits 2 -> 4 -> 8, then
fp16, then dense; onebit and ternary: fp16, then dense; fp16 and bf16:
dense. Every rank takes the same decisions at the same step.

Parameters left unset take the C++ library's defaults, read through the
extension.
"""

from typing import Any, Optional, Tuple, Union

from frugal._ext import ext
from frugal.errors import InvalidArgumentError

__all__ = ["Guardrail", "GuardrailLike"]

_FIELDS = ("lower", "upper", "patience", "smoothing", "cooldown")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"guardrail.{name}: expected a number, got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value < 2 ** 63:
        raise InvalidArgumentError(
            f"guardrail.{name}: must be an int >= 1, got {value!r}")
    return value


class Guardrail:
    """Immutable guardrail options: bounds on the smoothed residual ratio
    (lower < upper, lower >= 0), patience and cooldown in steps (>= 1),
    smoothing in (0, 1]. Out-of-range values raise InvalidArgumentError
    naming the field (guardrail.upper, ...)."""

    __slots__ = ("_options",)

    def __init__(self, lower: Optional[float] = None,
                 upper: Optional[float] = None, *,
                 patience: Optional[int] = None,
                 smoothing: Optional[float] = None,
                 cooldown: Optional[int] = None) -> None:
        defaults = ext.GuardrailOptions.defaults()
        given = {"lower": lower, "upper": upper, "patience": patience,
                 "smoothing": smoothing, "cooldown": cooldown}
        values = {name: getattr(defaults, name) if value is None else
                  (_count(name, value) if name in ("patience", "cooldown")
                   else _number(name, value))
                  for name, value in given.items()}
        object.__setattr__(self, "_options", ext.GuardrailOptions(**values))

    @staticmethod
    def of(value: "GuardrailLike") -> Optional["Guardrail"]:
        """None or False (off), True (the defaults) or a Guardrail."""
        if value is None or value is False:
            return None
        if value is True:
            return Guardrail()
        if isinstance(value, Guardrail):
            return value
        raise InvalidArgumentError(
            f"guardrail: expected None, a bool or a frugal.Guardrail, got "
            f"{type(value).__name__}")

    @property
    def lower(self) -> float:
        return float(self._options.lower)

    @property
    def upper(self) -> float:
        return float(self._options.upper)

    @property
    def patience(self) -> int:
        return int(self._options.patience)

    @property
    def smoothing(self) -> float:
        return float(self._options.smoothing)

    @property
    def cooldown(self) -> int:
        return int(self._options.cooldown)

    def _key(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Guardrail):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Guardrail(%r, %r, patience=%r, smoothing=%r, cooldown=%r)" \
            % self._key()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Guardrail is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Guardrail is immutable")

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, self._key())


def _rebuild(lower: float, upper: float, patience: int, smoothing: float,
             cooldown: int) -> Guardrail:
    return Guardrail(lower, upper, patience=patience, smoothing=smoothing,
                     cooldown=cooldown)


GuardrailLike = Union[Guardrail, bool, None]

"""Compression: which method an allreduce uses, and its parameters.

Parameters left unset take the C++ library's defaults, read through the
extension; ``params`` shows the values they resolved to.
"""

from typing import Any, Dict, Optional, Tuple, Union

from frugal._ext import ext
from frugal.errors import InvalidArgumentError

__all__ = ["Compression", "CompressionLike"]

# The parameter repr always shows, so that it says what the method does.
_SHOWN_ALWAYS = {
    "topk": ("density", "k"),
    "onebit": ("scaling",),
    "ternary": ("bucket",),
    "qsgd": ("bits",),
}


class Compression:
    """An immutable compression method with its resolved parameters.

    Equal methods with equal resolved parameters compare and hash equal:
    ``Compression.topk() == Compression.topk(density=0.01)``.
    """

    __slots__ = ("_config", "_params")

    def __init__(self, method: str, **params: Any) -> None:
        if not isinstance(method, str):
            raise InvalidArgumentError(
                f"method: expected a str, got {type(method).__name__}")
        config = ext.make_compression(method, params)
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_params", dict(config.params))

    @classmethod
    def none(cls) -> "Compression":
        """Dense: no compression."""
        return cls("none")

    @classmethod
    def fp16(cls) -> "Compression":
        """IEEE half precision, round to nearest even."""
        return cls("fp16")

    @classmethod
    def bf16(cls, *, stochastic_rounding: Optional[bool] = None
             ) -> "Compression":
        """bfloat16; stochastic rounding makes it unbiased."""
        return cls("bf16", stochastic_rounding=stochastic_rounding)

    @classmethod
    def topk(cls, density: Optional[float] = None, *,
             k: Optional[int] = None, selection: Optional[str] = None,
             tolerance: Optional[float] = None,
             values: Optional[str] = None,
             scope: Optional[str] = None,
             gtopk: Optional[bool] = None) -> "Compression":
        """The k largest magnitudes: k if given, else density * n.

        selection: "exact" or "sampled" (DGC-style threshold, within
        tolerance of k); values: "fp32" or "fp16" on the wire; scope:
        "global" (one selection over a buffer of several tensors) or
        "per_tensor" (each segment keeps its share of k, at least 1);
        gtopk: True cuts the sum back to the k largest at every step of
        the sparse recursive doubling (gTop-k: O(k log P) bytes per rank;
        what a cut drops returns to the senders' error feedback).
        """
        if density is not None and k is not None:
            raise InvalidArgumentError(
                "k: give either density or k, not both")
        return cls("topk", density=density, k=k, selection=selection,
                   tolerance=tolerance, values=values, scope=scope,
                   gtopk=gtopk)

    @classmethod
    def onebit(cls, scaling: Optional[str] = None, *,
               bucket: Optional[int] = None) -> "Compression":
        """Sign bits and per-chunk scales ("mean-abs" or "sign-means")."""
        return cls("onebit", scaling=scaling, bucket=bucket)

    @classmethod
    def ternary(cls, bucket: Optional[int] = None,
                clip: Optional[float] = None) -> "Compression":
        """TernGrad: {-s, 0, +s} per bucket, stochastic; the scale clipped
        at clip·σ (0: off, unbiased)."""
        return cls("ternary", bucket=bucket, clip=clip)

    @classmethod
    def qsgd(cls, bits: Optional[int] = None, bucket: Optional[int] = None,
             norm: Optional[str] = None) -> "Compression":
        """QSGD: 2, 4 or 8 bits per level, per-bucket norm ("l2"/"max")."""
        return cls("qsgd", bits=bits, bucket=bucket, norm=norm)

    @classmethod
    def parse(cls, text: str) -> "Compression":
        """From "method" or "method:name=value,name=value".

        e.g. "topk:density=0.01,selection=sampled", "qsgd:bits=8".
        """
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"compression: expected a str, got {type(text).__name__}")
        method, _, rest = text.strip().partition(":")
        params: Dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            name, eq, value = item.partition("=")
            if not eq or not name.strip():
                raise InvalidArgumentError(
                    f"compression: {item!r} in {text!r} is not name=value")
            params[name.strip()] = _parse_value(value.strip())
        return cls(method.strip(), **params)

    @staticmethod
    def of(value: "CompressionLike") -> "Compression":
        """None (dense), a Compression, or a string for parse()."""
        if value is None:
            return Compression.none()
        if isinstance(value, Compression):
            return value
        if isinstance(value, str):
            return Compression.parse(value)
        raise InvalidArgumentError(
            "compression: expected a frugal.Compression, a str such as "
            f"'topk:density=0.01' or None, got {type(value).__name__}")

    @property
    def method(self) -> str:
        return str(self._config.method)

    @property
    def params(self) -> Dict[str, Any]:
        return dict(self._params)

    @property
    def compressed(self) -> bool:
        """False for "none" (dense)."""
        return self.method != "none"

    def _key(self) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
        return self.method, tuple(sorted(self._params.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Compression):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        defaults = ext.make_compression(self.method, {}).params
        shown = _SHOWN_ALWAYS.get(self.method, ())
        args = [f"{name}={value!r}" for name, value in self._params.items()
                if name in shown or defaults.get(name) != value]
        return f"Compression.{self.method}({', '.join(args)})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Compression is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Compression is immutable")

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (self.method, self._params))


def _rebuild(method: str, params: Dict[str, Any]) -> Compression:
    return Compression(method, **params)


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


CompressionLike = Union[Compression, str, None]

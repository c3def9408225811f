"""Checks that a tensor can be worked on in place, and exposes its memory.

Torch CPU tensors and numpy arrays are accepted when frugal can write the
result into their own memory (no copy): contiguous, writeable, on the CPU,
and float32 where the collective reduces. Anything else is an
InvalidArgumentError naming the argument, the problem and the fix.
"""

import sys
from typing import Any

from frugal.errors import InvalidArgumentError

__all__ = ["as_buffer"]


def _torch_buffer(t: Any, name: str, float32: bool) -> Any:
    torch = sys.modules["torch"]
    if t.layout != torch.strided:
        raise InvalidArgumentError(
            f"{name}: layout {t.layout}; frugal works on dense tensors "
            f"— use {name}.to_dense()")
    if t.device.type != "cpu":
        raise InvalidArgumentError(
            f"{name}: on device {t.device}; frugal works on CPU memory "
            f"— use {name}.cpu() and copy the result back")
    if float32 and t.dtype != torch.float32:
        raise InvalidArgumentError(
            f"{name}: dtype {t.dtype}; frugal reduces float32 "
            f"— use {name}.float()")
    if t.requires_grad:
        raise InvalidArgumentError(
            f"{name}: requires grad, and frugal writes into it in place "
            f"— pass {name}.data or {name}.detach()")
    if not t.is_contiguous():
        raise InvalidArgumentError(
            f"{name}: not contiguous; frugal works in place "
            f"— use {name}.contiguous() and copy the result back")
    if t.is_conj() or t.is_neg():
        raise InvalidArgumentError(
            f"{name}: has a lazy conjugate or negation bit "
            f"— use {name}.resolve_conj().resolve_neg()")
    # Shares the tensor's memory (a view's offset included).
    return t.detach().numpy()


def _numpy_buffer(a: Any, name: str, float32: bool) -> Any:
    np = sys.modules["numpy"]
    if float32 and a.dtype != np.float32:
        raise InvalidArgumentError(
            f"{name}: dtype {a.dtype}; frugal reduces float32 "
            f"— use {name}.astype(numpy.float32)")
    if not a.flags.writeable:
        raise InvalidArgumentError(
            f"{name}: read-only; frugal writes the result into it "
            f"— pass a writeable array (e.g. {name}.copy())")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(
            f"{name}: not C-contiguous; frugal works in place "
            f"— use numpy.ascontiguousarray({name}) and copy the result back")
    if not a.flags.aligned:
        raise InvalidArgumentError(
            f"{name}: not aligned to its element size "
            f"— pass {name}.copy()")
    return a


def as_buffer(tensor: Any, name: str = "tensor", *,
              float32: bool = True) -> Any:
    """The numpy array over `tensor`'s memory, or InvalidArgumentError."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        return _torch_buffer(tensor, name, float32)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(tensor, np.ndarray):
        return _numpy_buffer(tensor, name, float32)
    raise InvalidArgumentError(
        f"{name}: expected a torch.Tensor or numpy.ndarray, "
        f"got {type(tensor).__name__}")

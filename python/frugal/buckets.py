"""Buckets: gradient fusion with overlap (GradientBuckets in C++).

Register a model's tensors once, in the order backward produces their
gradients; each step, mark them ready as they are produced. A bucket's
allreduce starts in the background as soon as all its tensors are ready,
so communication overlaps the rest of backward; finish() waits for all and
writes the results back into the tensors handed to mark_ready.
"""

from typing import Any, Optional, Union

from frugal._ext import ext
from frugal._tensors import as_buffer
from frugal.collectives import allreduce_options
from frugal.compression import CompressionLike
from frugal.errors import InvalidArgumentError
from frugal.runtime import Communicator, get_communicator

__all__ = ["Buckets"]

_MB = 1024 * 1024


class Buckets:
    """Fused, overlapped (compressed) allreduces of many tensors.

    Every rank must add the same tensors in the same order. Error
    feedback lives per bucket; state_dict() / load_state_dict() save and
    restore it with checkpoints. non_finite: "default", "error", "skip"
    (every rank skips the whole step; see last_step_skipped) or "zero".
    dense_vectors: with a compression method, tensors added with
    dims <= 1 (biases, normalisation weights) are reduced uncompressed in
    buckets of their own; False compresses every tensor. Each bucket's
    allreduce gets its tensors' sizes as segments, so no quantization
    scale (and with topk scope="per_tensor" no selection) covers two.
    """

    def __init__(self, *, compression: CompressionLike = None,
                 op: str = "average", bucket_mb: float = 25.0,
                 error_feedback: bool = True, seed: int = 0,
                 non_finite: str = "default",
                 timeout: Optional[float] = None,
                 dense_vectors: bool = True,
                 comm: Optional[Communicator] = None) -> None:
        if not isinstance(dense_vectors, bool):
            raise InvalidArgumentError(
                f"dense_vectors: expected a bool, got "
                f"{type(dense_vectors).__name__}")
        if isinstance(bucket_mb, bool) or \
                not isinstance(bucket_mb, (int, float)) or \
                not 0 < bucket_mb < 1 << 20:
            raise InvalidArgumentError(
                f"bucket_mb: must be a positive number of MiB, "
                f"got {bucket_mb!r}")
        self._comm = get_communicator() if comm is None else comm
        options = allreduce_options(compression, op, "auto", seed,
                                    error_feedback, timeout, non_finite)
        self._impl = ext.Buckets(self._comm, options,
                                 max(1, int(bucket_mb * _MB)), dense_vectors)

    def add(self, name: str, numel: int, dims: Optional[int] = None) -> int:
        """Registers a tensor of `numel` floats; returns its id. dims: the
        tensor's number of dimensions (None: treated as a matrix)."""
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"name: expected a str, got {type(name).__name__}")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 1:
            raise InvalidArgumentError(
                f"numel: must be a positive int, got {numel!r}")
        if dims is not None and (isinstance(dims, bool) or
                                 not isinstance(dims, int) or dims < 0):
            raise InvalidArgumentError(
                f"dims: must be an int >= 0 or None, got {dims!r}")
        return self._impl.add(name, numel, dims)

    def mark_ready(self, key: Union[int, str], tensor: Any) -> None:
        """Hands over tensor `key`'s gradient (copied into its bucket now;
        the result is written back into `tensor` by finish()). Marking a
        tensor twice in a step raises InvalidArgumentError naming it and
        ends the step on every rank (the peers raise MismatchError)."""
        try:
            if isinstance(key, bool) or not isinstance(key, (int, str)) or \
                    (isinstance(key, int) and key < 0):
                raise InvalidArgumentError(
                    f"key: expected a tensor id (int >= 0) or name, "
                    f"got {key!r}")
            self._impl.mark_ready(key, as_buffer(tensor, "tensor"))
        except InvalidArgumentError:
            self._abandon_step()
            raise

    def _abandon_step(self) -> None:
        """After this rank rejected a gradient: ends the step, then lets
        the peers know, so that they raise MismatchError at once instead
        of waiting for the timeout in a bucket this rank never starts."""
        try:
            # Waits for the buckets already started (the peers run them
            # too) and resets the step, raising if a tensor is missing.
            self._impl.finish()
        except Exception:
            pass
        # Even when every tensor had been marked (the rejected call was a
        # duplicate after the last one) and the step's allreduces all ran,
        # the peers must not carry on as if nothing happened: this barrier
        # fails their next collective with MismatchError.
        self._comm._reject()

    def finish(self) -> None:
        """Waits for every bucket (GIL released), writes results back."""
        self._impl.finish()

    def undo_last_step(self) -> None:
        """Under non_finite="skip": restores the error-feedback state to
        before the last finished step, as if it had been skipped."""
        self._impl.undo_last_step()

    @property
    def last_step_skipped(self) -> bool:
        return self._impl.last_step_skipped

    @property
    def last_step_wire_bytes(self) -> int:
        """The bytes this rank sent in the last finish()'s allreduces."""
        return self._impl.last_step_wire_bytes

    @property
    def tensor_count(self) -> int:
        return self._impl.tensor_count

    @property
    def bucket_count(self) -> int:
        return self._impl.bucket_count

    def bucket_of(self, tensor_id: int) -> int:
        return self._impl.bucket_of(tensor_id)

    def state_dict(self) -> bytes:
        """The error-feedback state of every bucket, as bytes."""
        return self._impl.save_state()

    def load_state_dict(self, state: bytes) -> None:
        if not isinstance(state, (bytes, bytearray)):
            raise InvalidArgumentError(
                f"state: expected bytes, got {type(state).__name__}")
        self._impl.restore_state(bytes(state))

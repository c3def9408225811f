"""Buckets: gradient fusion with overlap (GradientBuckets in C++).

Register a model's tensors once, in the order backward produces their
gradients; each step, mark them ready as they are produced. A bucket's
allreduce starts in the background as soon as all its tensors are ready,
so communication overlaps the rest of backward; finish() waits for all and
writes the results back into the tensors handed to mark_ready.
"""

from typing import Any, Dict, List, Optional, Union

from frugal._ext import ext
from frugal._tensors import as_buffer
from frugal.autotune import Autotune, AutotuneLike
from frugal.collectives import allreduce_options
from frugal.compression import CompressionLike
from frugal.errors import InvalidArgumentError
from frugal.guardrail import Guardrail, GuardrailLike
from frugal.runtime import Communicator, get_communicator

__all__ = ["Buckets"]

_MB = 1024 * 1024


def _bucket(bucket: Any) -> int:
    if isinstance(bucket, bool) or not isinstance(bucket, int) or \
            bucket < 0:
        raise InvalidArgumentError(
            f"bucket: expected a bucket index (int >= 0), got {bucket!r}")
    return bucket


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

    guardrail: None (off, the default), True (frugal.Guardrail()'s
    defaults) or a frugal.Guardrail: each compressed bucket moves to a
    denser setting when error feedback holds back too much of its
    gradient, and back when it no longer does (frugal/guardrail.py); it
    needs error_feedback, and every rank must pass the same (else finish()
    raises MismatchError). The changes of the last finish() are in
    last_step_guardrail_events; bucket_rung(), bucket_setting() and
    bucket_residual_ratio() say where each bucket stands.

    hierarchical: False (the default) or True: every bucket is reduced
    hierarchically (docs/hierarchical.md): summed densely within each
    host, each rank's share allreduced (compressed) between hosts, then
    gathered densely within the host, so that a host sends 1/L of each
    bucket between hosts (L ranks per host). The constructor discovers
    the hosts (collective; FRUGAL_HOST_ID names a rank's host, else its
    hostname and network namespace); every host must hold the same
    number of ranks. It is
    blocking: finish() reduces the buckets one after another, with no
    overlap of backward. Not with guardrail (InvalidArgumentError naming
    both); last_step_wire_bytes then counts only the bytes sent between
    hosts.

    autotune: None (off, the default), True (frugal.Autotune()'s
    defaults) or a frugal.Autotune: compression = auto. Each compressed
    bucket tries the candidates and keeps the cheapest (frugal/autotune.py),
    so compression= must be None (dense: auto chooses) and error_feedback
    on (InvalidArgumentError naming autotune otherwise); not with
    hierarchical. Every rank must pass the same (else finish() raises
    MismatchError). The moves and decisions of the last finish() are in
    last_step_autotune_events; bucket_candidate() says which candidate
    (of autotune_candidates) a bucket runs; with guardrail= too, the
    guardrail steps a bucket denser than its candidate when needed.
    """

    def __init__(self, *, compression: CompressionLike = None,
                 op: str = "average", bucket_mb: float = 25.0,
                 error_feedback: bool = True, seed: int = 0,
                 non_finite: str = "default",
                 timeout: Optional[float] = None,
                 dense_vectors: bool = True,
                 comm: Optional[Communicator] = None,
                 guardrail: GuardrailLike = None,
                 hierarchical: bool = False,
                 autotune: AutotuneLike = None) -> None:
        if not isinstance(hierarchical, bool):
            raise InvalidArgumentError(
                f"hierarchical: expected a bool, got "
                f"{type(hierarchical).__name__}")
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
        self._guardrail = Guardrail.of(guardrail)
        self._autotune = Autotune.of(autotune)
        self._comm = get_communicator() if comm is None else comm
        options = allreduce_options(compression, op, "auto", seed,
                                    error_feedback, timeout, non_finite)
        self._impl = ext.Buckets(
            self._comm, options, max(1, int(bucket_mb * _MB)), dense_vectors,
            None if self._guardrail is None else self._guardrail._options,
            hierarchical,
            None if self._autotune is None else self._autotune._options)
        self._hierarchical = hierarchical

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
            # too) and resets the step. With a tensor missing it raises,
            # and so do the peers: the library refuses the buckets this rank
            # never started in their own agreement, naming the tensor.
            self._impl.finish()
        except Exception:
            return
        # Every tensor had been marked (the rejected call was a duplicate
        # after the last one) and the step's allreduces all ran: the peers
        # must not carry on as if nothing happened, so this barrier fails
        # their next collective with MismatchError.
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
        """The bytes this rank sent in the last finish()'s allreduces
        (with hierarchical=True, those sent between hosts only)."""
        return self._impl.last_step_wire_bytes

    @property
    def hierarchical(self) -> bool:
        """Whether the buckets are reduced hierarchically."""
        return self._hierarchical

    @property
    def tensor_count(self) -> int:
        return self._impl.tensor_count

    @property
    def bucket_count(self) -> int:
        return self._impl.bucket_count

    def bucket_of(self, tensor_id: int) -> int:
        return self._impl.bucket_of(tensor_id)

    @property
    def guardrail(self) -> Optional[Guardrail]:
        """The guardrail's options, or None when it is off."""
        return self._guardrail

    @property
    def last_step_guardrail_events(self) -> List[Dict[str, Any]]:
        """The changes of setting the last finish() decided, identical on
        every rank (empty with the guardrail off or for a skipped step),
        each a dict as frugal-train logs it: step (the buckets' reduced
        steps so far, this one included), bucket, from and to (the
        settings, e.g. "onebit" and "fp16"), from_rung, to_rung, ratio
        (the smoothed residual ratio that decided it), relative_error.
        The new setting applies from the next step on."""
        return self._impl.last_step_guardrail_events

    def bucket_rung(self, bucket: int) -> int:
        """Bucket `bucket`'s rung on its ladder: 0 is the configured
        setting (always 0 with the guardrail off or for a dense bucket)."""
        return self._impl.bucket_rung(_bucket(bucket))

    def bucket_setting(self, bucket: int) -> str:
        """The setting bucket `bucket` compresses with at the next step:
        "onebit", "fp16", "topk(density=0.04)", "qsgd(bits=8)", "dense"."""
        return self._impl.bucket_setting(_bucket(bucket))

    def bucket_residual_ratio(self, bucket: int) -> float:
        """The smoothed ||residual|| / ||input|| the guardrail tracks for
        bucket `bucket` (0 before its first observation at this rung)."""
        return self._impl.bucket_residual_ratio(_bucket(bucket))

    @property
    def autotune(self) -> Optional[Autotune]:
        """The compression = auto options, or None when it is off."""
        return self._autotune

    @property
    def autotune_candidates(self) -> List[str]:
        """The settings auto chooses from, as the library names them
        ("dense", "fp16", "ternary", "topk(density=0.01)"); empty when
        it is off."""
        return self._impl.autotune_candidates

    @property
    def last_step_autotune_events(self) -> List[Dict[str, Any]]:
        """Auto's moves and decisions of the last finish(), identical on
        every rank (empty with auto off, for a skipped step or when
        nothing changed), each a dict with the keys of frugal-train's
        "autotune" log records: step (the buckets' reduced steps so far,
        this one included), bucket, from and to (the candidates' names,
        equal at a decision that keeps it), decision (True at the end of
        a trial, False when the trial moves on to the next candidate) and
        costs (at a decision: each candidate's agreed cost in candidate
        order, seconds or the cost function's unit; else []). The new
        candidate applies from the next step on."""
        return self._impl.last_step_autotune_events

    def bucket_is_dense(self, bucket: int) -> bool:
        """Whether bucket `bucket` is reduced uncompressed whatever the
        compression (dense_vectors: a bucket of 1-D tensors)."""
        return self._impl.bucket_is_dense(_bucket(bucket))

    def bucket_candidate(self, bucket: int) -> int:
        """The index in autotune_candidates of the candidate bucket
        `bucket` runs at the next step; InvalidArgumentError for a dense
        bucket or with auto off."""
        return self._impl.bucket_candidate(_bucket(bucket))

    def state_dict(self) -> bytes:
        """The error-feedback state of every bucket, as bytes."""
        return self._impl.save_state()

    def load_state_dict(self, state: bytes) -> None:
        if not isinstance(state, (bytes, bytearray)):
            raise InvalidArgumentError(
                f"state: expected bytes, got {type(state).__name__}")
        self._impl.restore_state(bytes(state))

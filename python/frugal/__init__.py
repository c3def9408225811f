"""frugal: compressed collectives for data-parallel training.

    import frugal
    frugal.init()                     # torchrun, mpirun or scripts/launch
    state = frugal.State()            # error feedback, one per buffer
    frugal.allreduce(grad, compression=frugal.Compression.topk(0.01),
                     op="average", state=state)
    ps = frugal.PowerSGDState()       # PowerSGD: a list of tensors
    frugal.powersgd_allreduce([w.grad for w in weights], ps, rank=2)

See docs/python.md.
"""

from frugal._ext import ext as _ext
from frugal.autotune import Autotune
from frugal.buckets import Buckets
from frugal.collectives import (Handle, State, allgather_object, allreduce,
                                allreduce_async, barrier, broadcast)
from frugal.compression import Compression
from frugal.errors import (Error, InternalError, InvalidArgumentError,
                           MismatchError, PeerFailureError, TimeoutError,
                           TransportError)
from frugal.guardrail import Guardrail
from frugal.powersgd import (PowerSGDState, powersgd_allreduce,
                             powersgd_compresses)
from frugal.runtime import (Communicator, get_communicator, init,
                            is_initialized, rank, shutdown, size)
from frugal.sharded import allgather, reduce_scatter, shard_range

__version__ = _ext.__version__

__all__ = [
    "Autotune", "Buckets", "Communicator", "Compression", "Error",
    "Guardrail", "Handle",
    "InternalError", "InvalidArgumentError", "MismatchError",
    "PeerFailureError", "PowerSGDState", "State", "TimeoutError",
    "TransportError",
    "allgather", "allgather_object", "allreduce", "allreduce_async",
    "barrier", "broadcast", "get_communicator", "init", "is_initialized",
    "powersgd_allreduce", "powersgd_compresses", "rank", "reduce_scatter",
    "shard_range", "shutdown", "size",
]

"""The process's default communicator: init(), shutdown() and friends.

init() finds the other ranks in this order:

1. a ``store`` argument (a torch.distributed Store, or any object with
   ``set(key, value: bytes)`` and a blocking ``get(key) -> bytes``): the
   UCX worker addresses are exchanged through it;
2. torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
   torch.distributed's default store when init_process_group has run,
   else a TCPStore at MASTER_ADDR:MASTER_PORT (hosted by torchrun's agent,
   or by rank 0 outside torchrun);
3. mpirun (OMPI_COMM_WORLD_SIZE or PMIX_RANK): MPI_COMM_WORLD;
4. FRUGAL_RANK and FRUGAL_WORLD_SIZE (scripts/launch): frugal's own TCP
   store at FRUGAL_ADDR.
"""

import atexit
import datetime
import os
from typing import Any, Optional

from frugal._ext import ext
from frugal.errors import InvalidArgumentError

__all__ = ["init", "shutdown", "is_initialized", "get_communicator",
           "rank", "size", "Communicator"]

Communicator = ext.Communicator

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_DEFAULT_TIMEOUT = 60.0

_default: Optional[Communicator] = None
# Numbers each store-based init, so that a second init's keys do not
# collide with the first's.
_store_inits = 0
# The TCPStore made for torchrun's variables, kept for later inits: rank 0
# may host it, and peers may still be reading when its init returns.
_tcp_store: Any = None


def _under_mpirun() -> bool:
    return "OMPI_COMM_WORLD_SIZE" in os.environ or "PMIX_RANK" in os.environ


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"{name}: expected an integer, got {text!r}") from None


def _resolve_timeout(timeout: Optional[float]) -> float:
    if timeout is None:
        text = os.environ.get("FRUGAL_TIMEOUT")
        if text is None:
            return _DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise InvalidArgumentError(
                f"FRUGAL_TIMEOUT: not a number of seconds: {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentError(
            f"timeout: expected seconds as a number, got "
            f"{type(timeout).__name__}")
    if not 0 < timeout < float("inf"):
        raise InvalidArgumentError(
            f"timeout: must be a positive number of seconds, got {timeout}")
    return float(timeout)


def _rank_and_size(rank: Optional[int], world_size: Optional[int]):
    if rank is None:
        if "RANK" not in os.environ:
            raise InvalidArgumentError(
                "rank: not given, and RANK is not set")
        rank = _env_int("RANK")
    if world_size is None:
        if "WORLD_SIZE" not in os.environ:
            raise InvalidArgumentError(
                "world_size: not given, and WORLD_SIZE is not set")
        world_size = _env_int("WORLD_SIZE")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(
                f"{name}: expected an int, got {type(value).__name__}")
    if world_size < 1:
        raise InvalidArgumentError(
            f"world_size: must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(
            f"rank: must be in [0, {world_size}), got {rank}")
    return rank, world_size


def _torchrun_store(timeout: float) -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.distributed_c10d._get_default_store()
    global _tcp_store
    if _tcp_store is None:
        port = _env_int("MASTER_PORT")
        agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        _tcp_store = dist.TCPStore(
            os.environ["MASTER_ADDR"], port, _env_int("WORLD_SIZE"),
            is_master=_env_int("RANK") == 0 and not agent_hosts,
            timeout=datetime.timedelta(seconds=timeout))
    return _tcp_store


def _connect_store(store: Any, rank: int, world_size: int,
                   timeout: float) -> Communicator:
    global _store_inits
    prefix = f"frugal/{_store_inits}/"
    _store_inits += 1
    return ext.connect_store(store, rank, world_size, prefix, timeout)


def _check_given(comm: Communicator, rank: Optional[int],
                 world_size: Optional[int], source: str) -> None:
    if rank is not None and rank != comm.rank:
        raise InvalidArgumentError(
            f"rank: {rank} given, but {source} says {comm.rank}")
    if world_size is not None and world_size != comm.size:
        raise InvalidArgumentError(
            f"world_size: {world_size} given, but {source} says {comm.size}")


def _transport(transport: Optional[str], mpi_default: bool) -> str:
    if transport is None:
        transport = os.environ.get("FRUGAL_TRANSPORT") or (
            "mpi" if mpi_default else "ucx")
    if transport not in ("ucx", "mpi"):
        raise InvalidArgumentError(
            f"transport: {transport!r} is not one of 'ucx', 'mpi'")
    return transport


def _connect(transport: Optional[str], store: Any, rank: Optional[int],
             world_size: Optional[int], timeout: float) -> Communicator:
    env = os.environ
    if store is not None or all(v in env for v in _TORCHRUN_VARS):
        chosen = _transport(transport, mpi_default=False)
        if chosen == "mpi":
            raise InvalidArgumentError(
                "transport: 'mpi' needs ranks started by mpirun (it uses "
                "MPI_COMM_WORLD); with a store or under torchrun use 'ucx'")
        if store is None:
            store = _torchrun_store(timeout)
        r, n = _rank_and_size(rank, world_size)
        return _connect_store(store, r, n, timeout)
    if _under_mpirun():
        comm = ext.connect_mpi(_transport(transport, mpi_default=True),
                               timeout)
        _check_given(comm, rank, world_size, "MPI_COMM_WORLD")
        return comm
    if "FRUGAL_RANK" in env or "FRUGAL_WORLD_SIZE" in env:
        if _transport(transport, mpi_default=False) == "mpi":
            raise InvalidArgumentError(
                "transport: 'mpi' needs ranks started by mpirun; "
                "FRUGAL_RANK/FRUGAL_WORLD_SIZE (scripts/launch) give 'ucx'")
        for name, given in (("FRUGAL_RANK", rank),
                            ("FRUGAL_WORLD_SIZE", world_size)):
            if given is not None and name in env and \
                    str(given) != env[name].strip():
                raise InvalidArgumentError(
                    f"{name.lower()[7:]}: {given} given, but {name} is "
                    f"{env[name]!r}")
        return ext.connect_env(timeout)
    raise InvalidArgumentError(
        "init: cannot tell which ranks to join: pass store= (with rank= and "
        "world_size=), or start the processes with torchrun (RANK, "
        "WORLD_SIZE, MASTER_ADDR, MASTER_PORT), mpirun "
        "(OMPI_COMM_WORLD_SIZE or PMIX_RANK) or scripts/launch "
        "(FRUGAL_RANK, FRUGAL_WORLD_SIZE)")


def init(transport: Optional[str] = None, *, store: Any = None,
         rank: Optional[int] = None, world_size: Optional[int] = None,
         timeout: Optional[float] = None) -> Communicator:
    """Joins the other ranks and makes the default communicator.

    transport: "ucx" or "mpi"; default FRUGAL_TRANSPORT, else "mpi" under
    mpirun and "ucx" otherwise. timeout: seconds any single wait may take
    (default FRUGAL_TIMEOUT, else 60). Collective: every rank calls it.
    """
    global _default
    if _default is not None:
        raise InvalidArgumentError(
            "init: frugal is already initialized; call frugal.shutdown() "
            "first")
    _default = _connect(transport, store, rank, world_size,
                        _resolve_timeout(timeout))
    return _default


def is_initialized() -> bool:
    return _default is not None


def get_communicator() -> Communicator:
    """The default communicator made by init()."""
    if _default is None:
        raise InvalidArgumentError(
            "frugal is not initialized; call frugal.init() first")
    return _default


def rank() -> int:
    return get_communicator().rank


def size() -> int:
    return get_communicator().size


def shutdown() -> None:
    """Closes the default communicator; idempotent, also run at exit."""
    global _default
    comm, _default = _default, None
    if comm is not None:
        comm.close()


atexit.register(shutdown)

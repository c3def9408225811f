"""Making every rank start from rank root's model and optimizer state."""
import io
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Tuple, Union

import torch

import frugal

__all__ = ["broadcast_parameters", "broadcast_optimizer_state",
           "broadcast_object"]

Named = Union[Mapping, Iterable[Tuple[str, torch.Tensor]]]


def broadcast_parameters(params: Named, root_rank: int = 0, *,
                         comm: Optional[frugal.Communicator] = None
                         ) -> None:
    """Copies rank root_rank's tensors into every rank's, in place.

    params: model.state_dict() (parameters and buffers) or
    model.named_parameters(); every rank passes the same names in the
    same order. Any dtype; a tensor frugal cannot write in place (not
    contiguous) goes through a contiguous copy.
    """
    items = list(params.items() if isinstance(params, Mapping) else params)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2
                and isinstance(item[1], torch.Tensor)):
            raise frugal.InvalidArgumentError(
                "broadcast_parameters: expected a state_dict() or (name, "
                "tensor) pairs such as model.named_parameters(), got an "
                "item of type %s" % type(item).__name__)
    with torch.no_grad():
        for _, tensor in items:
            data = tensor.detach()
            if data.is_contiguous():
                frugal.broadcast(data, root_rank, comm=comm)
            else:
                copy = data.contiguous()
                frugal.broadcast(copy, root_rank, comm=comm)
                data.copy_(copy)


def broadcast_object(obj: Any, root_rank: int = 0, *,
                     comm: Optional[frugal.Communicator] = None) -> Any:
    """rank root_rank's `obj` on every rank (torch.save / torch.load: among
    trusted ranks only)."""
    comm = frugal.get_communicator() if comm is None else comm
    payload = b""
    if comm.rank == root_rank:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        payload = buffer.getvalue()
    size = torch.tensor([len(payload)], dtype=torch.int64)
    frugal.broadcast(size, root_rank, comm=comm)
    data = torch.zeros(int(size.item()), dtype=torch.uint8)
    if comm.rank == root_rank:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    if data.numel():
        frugal.broadcast(data, root_rank, comm=comm)
    if comm.rank == root_rank:
        return obj
    return torch.load(io.BytesIO(data.numpy().tobytes()))


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer,
                              root_rank: int = 0, *,
                              comm: Optional[frugal.Communicator] = None
                              ) -> None:
    """Loads rank root_rank's optimizer state (hyperparameters, momentum
    ...) on every rank. A DistributedOptimizer keeps each rank's own
    error-feedback residuals: only the wrapped optimizer's state moves."""
    state = torch.optim.Optimizer.state_dict(optimizer)
    state = broadcast_object(state, root_rank, comm=comm)
    torch.optim.Optimizer.load_state_dict(optimizer, state)

"""frugal for PyTorch: a DDP communication hook and a DistributedOptimizer.

    import frugal, frugal.torch
    frugal.init()
    ddp.register_comm_hook(
        frugal.torch.CommHookState(compression=frugal.Compression.topk()),
        frugal.torch.comm_hook)

    opt = frugal.torch.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        model.named_parameters(), compression=frugal.Compression.onebit())
    frugal.torch.broadcast_parameters(model.state_dict(), root_rank=0)
    frugal.torch.broadcast_optimizer_state(opt, root_rank=0)

See docs/pytorch.md.
"""
from frugal.torch.broadcast import (broadcast_object,
                                    broadcast_optimizer_state,
                                    broadcast_parameters)
from frugal.torch.hook import CommHookState, comm_hook
from frugal.torch.optimizer import DistributedOptimizer

__all__ = ["CommHookState", "DistributedOptimizer", "broadcast_object",
           "broadcast_optimizer_state", "broadcast_parameters", "comm_hook"]

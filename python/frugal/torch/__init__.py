"""frugal for PyTorch: a DDP communication hook and a DistributedOptimizer.

    import frugal, frugal.torch
    frugal.init()
    ddp.register_comm_hook(
        frugal.torch.CommHookState(compression=frugal.Compression.topk()),
        frugal.torch.comm_hook)
    # or PowerSGD, rank 2, exact for the first 10 iterations:
    ddp.register_comm_hook(frugal.torch.PowerSGDHookState(rank=2),
                           frugal.torch.powersgd_hook)

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
from frugal.torch.powersgd_hook import PowerSGDHookState, powersgd_hook

__all__ = ["CommHookState", "DistributedOptimizer", "PowerSGDHookState",
           "broadcast_object", "broadcast_optimizer_state",
           "broadcast_parameters", "comm_hook", "powersgd_hook"]

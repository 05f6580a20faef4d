"""DistributedDataParallel for ``MaskSub``: one gradient all-reduce per optimizer step.

DDP all-reduces the gradients at the end of every backward that runs outside ``no_sync()``, and its bookkeeping
(``prepare_for_backward``) happens in its forward, so every forward whose backward must be synchronised has to go
through the DDP module. ``MaskSub.forward`` therefore takes ``branch='main' | 'sub'``, and ``wrap_ddp`` wraps the
*wrapper* (model and mask token alike) and records the DDP module on it; ``train_step`` then calls

    with ddp.no_sync():  main forward + backward          (gradients accumulate locally)
    sub forward + backward                                (one all-reduce of the summed gradient)

and runs whole micro-steps under ``no_sync()`` while an accumulation window is open. For the joint schedule, call
the DDP module itself: ``ddp(images, target)['loss'].backward()`` is one forward, one backward, one all-reduce.

Every parameter must get a gradient in the synchronised backward (or pass ``find_unused_parameters=True``): true for
all three families, since the sub-branch uses the whole model (and the Swin mask token, unused by the main branch,
is only needed in the sub backward, which is the synchronised one).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from .wrapper import MaskSub

__all__ = ["average_batchnorm_stats", "close_process_group", "unwrap_ddp", "wrap_ddp"]


def wrap_ddp(ms: MaskSub, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(ms, **ddp_kwargs)``, remembered by ``ms`` so that ``ms.train_step`` routes its
    forwards through it. The process group must be initialised and ``ms`` on its device. Once per wrapper (until
    close_process_group): a second DDP module would register its own gradient hooks on the same parameters."""
    if getattr(ms, "_ddp", None) is not None:
        raise RuntimeError(
            "this MaskSub is already wrapped by wrap_ddp (a second DistributedDataParallel would all-reduce every "
            "gradient twice): keep the module the first call returned, or end that job with close_process_group(ms) "
            "before wrapping again"
        )
    ddp = DistributedDataParallel(ms, **ddp_kwargs)
    object.__setattr__(ms, "_ddp", ddp)  # not a submodule: ms would otherwise contain itself
    return ddp


def average_batchnorm_stats(module) -> None:
    """Average ``module``'s BatchNorm running statistics over the ranks, in place (timm's train.py ``--dist-bn
    reduce``). DDP broadcasts rank 0's buffers before its forwards, but each forward then updates every rank's
    statistics from its own batch: after the last one of an epoch each rank would validate its shard with slightly
    other statistics, and the logged metrics would not be those of the model saved (rank 0's). Every rank calls it
    (a collective), between epochs."""
    world = dist.get_world_size()
    for name, buffer in module.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel, else the module itself."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def close_process_group(ms: MaskSub | None = None) -> None:
    """The end of a torchrun job: forget ``ms``'s DistributedDataParallel module (the caller drops its own
    references to it first), wait for every rank, and destroy the process group.

    A DDP module's reducer holds the process group: alive after ``destroy_process_group``, the group would only be
    torn down with it during interpreter shutdown, where a gloo rank once aborted after training had finished
    ("terminate called without an active exception"). Collected here, the group's last reference goes with
    ``destroy_process_group``, while Python is fully alive."""
    if ms is not None:
        object.__setattr__(ms, "_ddp", None)
    gc.collect()  # the DDP module and its reducer, should a reference cycle still hold them
    dist.barrier()
    dist.destroy_process_group()

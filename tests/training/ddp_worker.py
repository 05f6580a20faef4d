"""Run by test_ddp.py under ``torchrun --nproc_per_node=2`` (gloo, CPU): MaskSub's train_step under DDP.

Each rank trains on its shard of a fixed global batch (micro-batch k of rank r: rows [(k * world + r) * B, ...)),
seed 100 * step + 10 * k + r for its sub-branch masks. A communication hook counts gradient all-reduces per
optimizer step. For each configuration NAME:SCHEDULE given, rank 0 writes {'grads': after the last step, 'params':
after all steps, 'allreduces': [per step]} to OUT_DIR/NAME-SCHEDULE.pt, for comparison with one process on the
combined batch. One torchrun for all configurations: starting the processes is most of the cost.
"""

import os
import sys

import torch
import torch.distributed as dist
from _models import batch, tiny_swin, tiny_vit
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from masksub_kernels.training import MaskSub, close_process_group
from masksub_kernels.training.engine import PlainStep

STEPS, ACCUM, B = 2, 2, 2


def shard(step: int, k: int, rank: int, world: int, name: str):
    """Micro-batch k of rank r at optimizer step ``step``, cut from one global batch per step."""
    images, target = batch(name, size=B * world * ACCUM, seed=step, dtype=torch.float64)
    start = (k * world + rank) * B
    return images[start : start + B], target[start : start + B]


def run(out_path: str, name: str, schedule: str) -> None:
    """schedule "plain": the --baseline step (PlainStep, the main criterion alone) on a DDP module of its own."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = (tiny_vit if name == "vit" else tiny_swin)().double()
    ms = MaskSub(model).train()
    if schedule == "plain":
        ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1000)
        plain = PlainStep(model, ms.main_criterion, ddp)
    else:
        ddp = ms.wrap_ddp(bucket_cap_mb=1000)
    counts = [0]

    def counting_allreduce(state, bucket):
        counts[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.5)
    per_step = []
    for step in range(STEPS):
        before = counts[0]
        for k in range(ACCUM):
            images, target = shard(step, k, rank, world, name)
            if schedule == "plain":
                plain(images, target, optimizer, accum_steps=ACCUM)
                continue
            ms.train_step(
                images, target, optimizer, accum_steps=ACCUM, seed=100 * step + 10 * k + rank, schedule=schedule
            )
        per_step.append(counts[0] - before)
    if rank == 0:
        torch.save(
            {
                "grads": {n: p.grad.clone() for n, p in ms.named_parameters()},
                "params": {n: p.detach().clone() for n, p in ms.named_parameters()},
                "allreduces": per_step,
                "world": world,
            },
            out_path,
        )
    dist.barrier()


def batchnorm_stats(out_path: str) -> None:
    """average_batchnorm_stats on per-rank statistics (rank r: mean r, var 1 + 2 r, 5 + r batches tracked)."""
    from masksub_kernels.training.distributed import average_batchnorm_stats

    rank = dist.get_rank()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    bn = model[1]
    bn.running_mean.fill_(rank)
    bn.running_var.fill_(1 + 2 * rank)
    bn.num_batches_tracked.fill_(5 + rank)
    average_batchnorm_stats(model)
    gathered = [torch.zeros(3) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, bn.running_mean)
    if rank == 0:
        torch.save({"mean": bn.running_mean, "var": bn.running_var, "tracked": bn.num_batches_tracked,
                    "same": all(torch.equal(g, gathered[0]) for g in gathered)}, out_path)  # fmt: skip
    dist.barrier()


if __name__ == "__main__":
    dist.init_process_group("gloo")
    out_dir, configs = sys.argv[1], sys.argv[2:]
    for config in configs:
        name, schedule = config.split(":")
        run(os.path.join(out_dir, f"{name}-{schedule}.pt"), name, schedule)
    batchnorm_stats(os.path.join(out_dir, "batchnorm.pt"))
    # not dist.destroy_process_group(): each MaskSub and its DDP module form a reference cycle, and a reducer
    # collected during interpreter shutdown, after the group was destroyed, aborted rank 0 once in CI ("terminate
    # called without an active exception"); close_process_group collects them first, as a user's job should
    close_process_group()

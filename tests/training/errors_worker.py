"""Run by test_torchrun_errors.py under ``torchrun --nproc_per_node=2`` (gloo, CPU): a training command's body
(determinism.run_command) in which rank 1 fails mid-run with its own error while rank 0 waits in a collective."""

import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

from masksub_kernels.training.determinism import run_command


def body(args) -> None:
    dist.init_process_group("gloo")
    dist.barrier()
    if dist.get_rank() == 1:
        raise ValueError("rank 1's own failure: bad image broken.png")
    dist.all_reduce(torch.ones(1))  # rank 0: the peer is gone


sys.exit(run_command("masksub-test", body, SimpleNamespace(deterministic=False)))

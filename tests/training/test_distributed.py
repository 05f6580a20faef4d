"""training/distributed.py and rank_zero.py: unwrap_ddp, and rank 0's checks let errors other than usage errors
through (helper-174's mutation audit)."""

import pytest
import torch


def test_unwrap_ddp_returns_the_inner_module(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from masksub_kernels.training import unwrap_ddp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        inner = torch.nn.Linear(2, 2)
        ddp = DistributedDataParallel(inner)
        assert unwrap_ddp(ddp) is inner and unwrap_ddp(inner) is inner
        del ddp
    finally:
        dist.destroy_process_group()


def test_rank_zero_check_lets_other_errors_through():
    from masksub_kernels.training.rank_zero import rank_zero_check

    def broken():
        raise OSError("disk")

    with pytest.raises(OSError, match="disk"):
        rank_zero_check(broken, 0, 1)

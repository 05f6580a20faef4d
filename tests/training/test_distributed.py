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


# kills distributed.py:59 `buffer.div_(world)` -> `buffer.div_(2)` (test_ddp's two ranks cannot tell the world size
# from a constant 2): on a group of one the statistics are the rank's own, and the step counter is not averaged
def test_average_batchnorm_stats_divides_by_the_world_size(tmp_path):
    import torch.distributed as dist

    from masksub_kernels.training.distributed import average_batchnorm_stats

    norm = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([1.0, -2.0, 4.0]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 8.0]))
        norm.num_batches_tracked.fill_(7)
    want = {name: value.clone() for name, value in norm.state_dict().items()}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        average_batchnorm_stats(torch.nn.Sequential(torch.nn.Linear(3, 3), norm))
    finally:
        dist.destroy_process_group()
    for name, value in norm.state_dict().items():
        assert torch.equal(value, want[name]), name

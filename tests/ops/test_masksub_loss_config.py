"""masksub_loss's launch configuration (ops/masksub_loss.py): blocks and warps, the forward's smaller blocks, the
configuration cache's key and bound (helper-170's mutation audit: a stale configuration on a GPU could hint aligned
data that is not, or take another MAX_BLOCK_C's block)."""

import torch

import masksub_kernels.ops._loss_layout as loss_layout
import masksub_kernels.ops.masksub_loss as ml


def test_launch_config_floor_and_warps():
    # BLOCK_C: a power of two of at least 16 classes, at most max_block; num_warps: BLOCK_C / 256 within [4, 16]
    assert ml._launch_config(5, 4096) == (16, 4)
    assert ml._launch_config(3000, 4096) == (4096, 16)
    assert ml._launch_config(3000, 1024) == (1024, 4)
    assert ml._launch_config(30522, 8192) == (8192, 16)


def test_forward_block_bce_a_quarter_of_the_backward():
    assert ml._forward_max_block(False) == ml.MAX_BLOCK_C // 2
    assert ml._forward_max_block(True) == ml.MAX_BLOCK_C // 4
    # BCE at C = 3000, one split (many rows): the forward's 1024 classes in 4 warps, CE's 2048 in 8
    z, y = torch.zeros(512, 3000), torch.zeros(512, dtype=torch.int64)
    for bce, block, warps in ((True, 1024, 4), (False, 2048, 8)):
        split, _, constexprs = ml._forward_config(z, None, y, bce, False, False, True, False, loss_layout.DEFAULT_SMS)
        assert split[0] == 1 and (constexprs["BLOCK_C"], constexprs["num_warps"]) == (block, warps)


def test_launch_configs_are_bounded(monkeypatch):
    monkeypatch.setattr(ml, "_MAX_CONFIGS", 2)
    monkeypatch.setattr(ml, "_CONFIGS", {})
    for classes in (40, 41, 42, 43, 44):
        assert ml._cached_config(lambda z, sms: z.shape[1], (torch.zeros(2, classes),), ()) == classes
        assert len(ml._CONFIGS) <= 2


def test_launch_config_keyed_by_data_alignment():
    # the same dtype, shape and strides, one view 16-byte aligned and one 2 bytes past: two configurations
    buf = torch.zeros(4 * 1000 + 8, dtype=torch.bfloat16)
    y = torch.zeros(4, dtype=torch.int64)
    options = (False, False, False, True, False)
    a = ml._cached_config(ml._forward_config, (buf[:4000].view(4, 1000), None, y), options)
    b = ml._cached_config(ml._forward_config, (buf[1:4001].view(4, 1000), None, y), options)
    assert a[2]["ALIGNED"] and not b[2]["ALIGNED"]


def test_launch_config_keyed_by_max_block(monkeypatch):
    z, y = torch.zeros(512, 3000), torch.zeros(512, dtype=torch.int64)
    options = (False, False, False, True, False)
    assert ml._cached_config(ml._forward_config, (z, None, y), options)[2]["BLOCK_C"] == 2048
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    assert ml._cached_config(ml._forward_config, (z, None, y), options)[2]["BLOCK_C"] == 32

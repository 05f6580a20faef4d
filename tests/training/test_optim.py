"""training/optim.py: a frozen wrapper parameter stays out of the layer-decay groups; lookahead names checked by
their inner optimizer (helper-171's mutation audit)."""

import types

import timm

from masksub_kernels.training import MaskSub
from masksub_kernels.training.optim import build_optimizer


def test_a_frozen_mask_token_stays_out_of_the_layer_decay_groups():
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 2), num_classes=10)  # fmt: skip
    ms = MaskSub(swin)
    ms.mask_token.requires_grad_(False)
    args = types.SimpleNamespace(opt="adamw", lr=1e-3, weight_decay=0.05, momentum=None, opt_eps=None,
                                 opt_betas=None, layer_decay=0.5)  # fmt: skip
    optimizer = build_optimizer(args, ms, swin)
    assert not any(p is ms.mask_token for g in optimizer.param_groups for p in g["params"])


def test_a_lookahead_name_is_checked_by_its_inner_optimizer():  # optim.py:55 split("_")[-1]
    import pytest
    import torch

    from masksub_kernels.training.run_setup import UsageError

    model = torch.nn.Linear(3, 2)
    args = types.SimpleNamespace(opt="lookahead_adamw", lr=1e-3, weight_decay=0.05, momentum=0.5, opt_eps=None,
                                 opt_betas=None, layer_decay=None)  # fmt: skip
    with pytest.raises(UsageError, match="takes no --momentum"):
        build_optimizer(args, model, model)

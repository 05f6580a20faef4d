"""What masksub-train says on the console (helper-295): the first line names the MaskSub family and what its
sub-branch does (or --baseline's plain training), the backend and the device -- before, only log.json's
meta.family / meta.backend did."""

import json
import warnings

import pytest
from _models import tiny_resnet, tiny_swin, tiny_vit
from test_cli_more import TINY_VIT

from masksub_kernels.train import main
from masksub_kernels.training import MaskSub
from masksub_kernels.training.families import describe_sub_branch

ONE_STEP = ["--epochs", "1", "--limit-batches", "1", "--warmup-epochs", "0"]


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ([], "masksub-train: MaskSub family vit (token drop: keep 8 of 16 tokens), backend torch on cpu"),
        (["--mask-ratio", "0.75"], "masksub-train: MaskSub family vit (token drop: keep 4 of 16 tokens), backend"),
        (
            ["--variant", "path", "--mask-ratio", "0.2"],
            "masksub-train: MaskSub family vit (PathSub: drop-path at rate 0.2 in",
        ),
        (["--baseline"], "masksub-train: --baseline (plain training, no MaskSub sub-branch), backend torch on cpu"),
    ],
)
def test_the_first_line_names_the_family_sub_branch_and_backend(tmp_path, capsys, extra, line):
    assert main([*TINY_VIT, *ONE_STEP, *extra, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(line), out
    assert out[1].startswith("epoch 1/1:")
    with open(tmp_path / "log.json") as f:
        meta = json.load(f)["meta"]
    assert meta["backend"] == "torch" and meta["family"] == (None if "--baseline" in extra else "vit")


def test_the_grid_families_and_the_fallback_in_words():
    from timm.models.mlp_mixer import MlpMixer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixer = MaskSub(MlpMixer(num_classes=3, img_size=64, patch_size=16, num_blocks=1, embed_dim=8), mask_ratio=0.5)
    assert describe_sub_branch(MaskSub(tiny_swin(), mask_ratio=0.5), 64) == (
        "swin (mask token on 2 of 4 stage-1 cells of 8 x 8 tokens)"
    )
    assert describe_sub_branch(MaskSub(tiny_resnet(), mask_ratio=0.75, cell_size=16), 64) == (
        "pixel (grid cells: 12 of 16 cells of 16 x 16 pixels set to 0)"
    )
    assert describe_sub_branch(mixer, 64) == (
        "pixel (grid cells: 2 of 4 cells of 32 x 32 pixels set to 0; the fallback for a model that is not a CNN)"
    )
    # a ViT's patch dropout runs before the selection: the sub-branch keeps a share of what it left
    assert describe_sub_branch(MaskSub(tiny_vit(patch_drop_rate=0.25), mask_ratio=0.5), 32) == (
        "vit (token drop: keep 6 of 12 tokens that its patch dropout keeps of 16)"
    )

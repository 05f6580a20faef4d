"""masksub_kernels.training.run_setup: check_args' ranges and checks, the torchrun device rule, setup()'s
fallbacks (helper-177's mutation audit: 42 mutants, 17 gaps in run_setup, config, _backend and pretrained; each test
names the mutant it kills). Most call check_args on parsed options (no model is built); a few run setup() on the
digits with a tiny ViT (~1 s)."""

import datetime

import pytest

pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")

from masksub_kernels.training.cli import build_parser
from masksub_kernels.training.run_setup import UsageError, check_args

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--img-size", "16"]  # fmt: skip


def _check(*argv: str) -> None:
    check_args(build_parser().parse_args([*argv, "--output", "unused"]))


def test_run_setup_layer_decay_zero_is_refused():
    # kills run_setup.py:358 ("layer_decay", 0.0, 1.0, False -> True, True): a 0 would freeze every layer but the head
    with pytest.raises(UsageError, match=r"--layer-decay must be in \(0\.0, 1\.0\], got 0\.0"):
        _check("--layer-decay", "0")
    _check("--layer-decay", "1.0")  # the upper bound is allowed


def test_run_setup_head_init_scale_zero_is_refused():
    # kills run_setup.py:360 ("head_init_scale", 0.0, None, False -> True, True)
    with pytest.raises(UsageError, match=r"--head-init-scale must be in \(0\.0, inf\), got 0\.0"):
        _check("--head-init-scale", "0", "--initial-checkpoint", "some.pth")


def test_run_setup_recount_zero_is_refused():
    # kills run_setup.py:364 ("recount", 1 -> 0, ...)
    with pytest.raises(UsageError, match=r"--recount must be in \[1, inf\), got 0"):
        _check("--recount", "0")


def test_run_setup_cutmix_alone_needs_an_even_batch():
    # kills run_setup.py:394 `args.mixup > 0 or args.cutmix > 0` -> `args.mixup > 0` (timm's Mixup flips the batch)
    with pytest.raises(UsageError, match="Mixup / CutMix need an even --batch-size, got 7"):
        _check("--cutmix", "1.0", "--batch-size", "7")


def test_run_setup_opt_betas_may_be_zero():
    # kills run_setup.py:402 `0.0 <= b < 1.0` -> `0.0 < b < 1.0` (beta1 = 0: Adam without momentum, a valid choice)
    _check("--opt-betas", "0.0", "0.999")
    with pytest.raises(UsageError, match=r"--opt-betas are two numbers in \[0, 1\)"):
        _check("--opt-betas", "-0.1", "0.999")


def test_run_setup_std_zero_is_refused():
    # kills run_setup.py:406 `any(s <= 0 ...)` -> `any(s < 0 ...)` (a 0 std divides by zero in Normalize)
    with pytest.raises(UsageError, match="std > 0"):
        _check("--mean", "0.5", "--std", "0")


def test_run_setup_mean_and_std_lengths_must_agree():
    # kills run_setup.py:406 dropping `len(args.mean) != len(args.std) or`
    with pytest.raises(UsageError, match="need as many numbers each"):
        _check("--mean", "0.5", "0.5", "0.5", "--std", "0.25")


def test_run_setup_scale_min_zero_is_refused():
    # kills run_setup.py:408 `not 0 < args.scale[0]` -> `not 0 <= args.scale[0]` (a zero-area crop)
    with pytest.raises(UsageError, match="--scale is a crop-area range 0 < min <= max <= 1"):
        _check("--scale", "0", "0.5")
    _check("--scale", "0.08", "1.0")


def test_run_setup_grad_accum_hint_names_limit_batches_at_equality(tmp_path, capsys):
    # kills run_setup.py:548 `samples // args.batch_size >= args.grad_accum_steps` -> `>`: 1437 digits / 64 = 22
    # whole batches, exactly --grad-accum-steps 22, so only --limit-batches 21 leaves too few: the hint must say so
    from masksub_kernels.train import main

    argv = [*TINY_VIT, "--epochs", "1", "--batch-size", "64", "--grad-accum-steps", "22", "--limit-batches", "21"]
    assert main([*argv, "--output", str(tmp_path / "err")]) == 2
    err = capsys.readouterr().err
    assert "give 21 batch(es) of 64 (--limit-batches): fewer than --grad-accum-steps 22" in err, err


def test_run_setup_head_init_scale_needs_an_initial_checkpoint():
    # kills run_setup.py:410 `args.initial_checkpoint is None` -> `is False` (the check never fires)
    with pytest.raises(UsageError, match=r"--head-init-scale .* pass --initial-checkpoint"):
        _check("--head-init-scale", "0.001")
    _check("--head-init-scale", "0.001", "--initial-checkpoint", "some.pth")
    # helper-329: a resume loads the checkpoint's weights, head included; the MAE / CLIP recipes' --head-init-scale
    # refused `--config recipes/mae_finetune.yaml --resume OUT/last.pth`, asking for a file it would not load
    _check("--head-init-scale", "0.001", "--resume", "some/last.pth")


def test_run_setup_torchrun_with_as_many_processes_as_gpus_is_accepted(monkeypatch):
    # kills run_setup.py:149 `local_world > gpus` -> `>=` (2 processes on a 2-GPU machine refused); no GPU needed:
    # torch.cuda and the process group are stubbed
    import torch
    import torch.distributed as dist

    from masksub_kernels.training import run_setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    groups = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: groups.append((backend, timeout)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run_setup._distributed(None) == (1, 2, torch.device("cuda", 1))
    assert groups == [("nccl", datetime.timedelta(minutes=60))]  # not NCCL's 10 minutes (helper-249)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # more processes than GPUs: still refused
    with pytest.raises(UsageError, match="3 processes on this machine but 2 GPU"):
        run_setup._distributed(None)


def test_run_setup_amp_on_cpu_trains_in_float32_with_a_note(tmp_path, capsys):
    # kills run_setup.py:583 `amp = args.amp and device.type == "cuda"` -> `amp = args.amp` (the recipes turn --amp
    # on: on a CPU it would autocast to float16 with a GradScaler, and no note)
    from masksub_kernels.training.run_setup import setup

    s = setup(build_parser().parse_args([*TINY_VIT, "--amp", "--device", "cpu", "--output", str(tmp_path)]))
    assert s.autocast is None and s.scaler is None
    assert "--amp runs on CUDA devices only: training in float32 on cpu" in capsys.readouterr().err


def test_run_setup_a_non_square_img_size_kwarg_is_not_replaced_on_the_digits(tmp_path):
    # kills run_setup.py:311 dropping `or "img_size" in args.model_kwargs`: a model built for (16, 32) at the
    # digits' default 32 px was rebuilt silently at img_size=32, overriding the user's kwarg; it must be refused
    from masksub_kernels.training.run_setup import setup

    argv = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=(16,32)", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--output", str(tmp_path)]  # fmt: skip
    with pytest.raises(UsageError, match=r"the model is built for \(16, 32\) images but the data is 32 x 32"):
        setup(build_parser().parse_args(argv))


# helper-218's third mutation audit of the image command's data and augmentation pipeline (53 mutants)


# Kills run_setup.py _mean_std's model config dropped (ImageNet's statistics always): without --mean / --std an
# image folder is normalised as the model's pretrained weights expect (OpenAI CLIP's for a CLIP ViT).
def test_run_setup_normalises_with_the_models_own_statistics(tmp_path):
    from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from masksub_kernels.training.run_setup import _mean_std

    args = build_parser().parse_args(["--model", "vit_base_patch16_clip_224", "--data-dir", str(tmp_path)])
    assert _mean_std(args, 3) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@pytest.mark.parametrize("prefix", [False, True])
def test_warmup_prefix_decays_over_the_epochs_after_the_warm_up(tmp_path, prefix):
    # helper-232: MAE's lr_sched.py and FT-CLIP's cosine_scheduler start the cosine after the warm-up, over
    # epochs - warmup; timm's default (warmup_prefix=False) runs it over all the epochs, the warm-up's included, so
    # the recipes' rates fell below their sources' (CLIP's warm-up ended at 0.905 x --lr). --warmup-prefix is theirs.
    import math

    from masksub_kernels.training.run_setup import setup

    argv = [*TINY_VIT, "--epochs", "6", "--warmup-epochs", "2", "--warmup-lr", "0", "--lr", "1e-3", "--min-lr", "1e-6"]
    argv += ["--limit-batches", "4", "--output", str(tmp_path), *(["--warmup-prefix"] if prefix else [])]
    s = setup(build_parser().parse_args(argv))
    per_epoch, warmup, total = 4, 8, 24
    for update in range(total):
        s.scheduler.step_update(num_updates=update)
        epoch = update / per_epoch
        if update < warmup:  # both: linear from 0 (MAE: lr * epoch / warmup_epochs)
            want = 1e-3 * update / warmup
        elif prefix:  # MAE: min_lr + (lr - min_lr) / 2 (1 + cos(pi (epoch - warmup) / (epochs - warmup)))
            want = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (epoch - 2) / (6 - 2)))
        else:  # timm's: the cosine over every update, the warm-up's included
            want = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * update / total))
        assert s.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9), update


def test_the_mae_and_clip_recipes_warm_up_before_their_cosine():
    from test_recipes import _recipe

    from masksub_kernels.training.config import parse_args_with_config

    for name, prefix in (("mae_finetune", True), ("clip_finetune", True), ("deit3", False), ("swin", False)):
        assert parse_args_with_config(build_parser(), ["--config", _recipe(name)]).warmup_prefix is prefix, name


def test_the_baselines_size_check_warns_of_no_sub_branch(tmp_path):
    # helper-236: the check asked resolve_family, whose pixel fallback warns "its sub-branch uses the pixel-grid
    # fallback ... pass family='pixel'": a --baseline MLP-Mixer has no sub-branch and the command no family option
    import warnings

    from masksub_kernels.training.run_setup import setup

    argv = [
        "--model",
        "mixer_s16_224",
        "--model-kwargs",
        "img_size=32",
        "--img-size",
        "32",
        "--cell-size",
        "16",
        "--baseline",
        "--output",
        str(tmp_path),
    ]  # fmt: skip (one cell of 32: none kept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup(build_parser().parse_args(argv))


@pytest.mark.parametrize("baseline", [False, True])
def test_both_arms_refuse_a_size_the_vits_patches_do_not_tile(tmp_path, baseline):
    # helper-231: the MaskSub arm refused 30 px at patch 8; --baseline (a non-strict, dynamic-size ViT, or one built
    # at that size) trained on the 3 x 3 patches timm's convolution keeps, a 6-pixel border silently dropped
    from masksub_kernels.training.run_setup import setup

    # (helper-234: the first fix checked timm's VisionTransformer alone: an Eva, a BEiT, a relpos ViT still cropped)
    models = [("vit_tiny_patch16_224", extra) for extra in (["img_size=30"], ["img_size=32", "dynamic_img_size=True"])]
    models += [(name, ["img_size=30"]) for name in ("eva02_tiny_patch14_224", "beit_base_patch16_224")]
    models += [("vit_relpos_small_patch16_224", ["img_size=30"])]
    for name, extra in models:
        argv = ["--model", name, "--model-kwargs", "patch_size=8", "embed_dim=16", "depth=1",
                "num_heads=2", *extra, "--img-size", "30", "--output", str(tmp_path)]  # fmt: skip
        with pytest.raises(UsageError, match=r"image size \(30, 30\) is not divisible by the ViT patch size \(8, 8\)"):
            setup(build_parser().parse_args([*argv, *(["--baseline"] if baseline else [])]))


@pytest.mark.parametrize("baseline", [False, True])
def test_both_arms_refuse_a_cell_size_that_does_not_fit(tmp_path, baseline):
    # helper-296's probe: --baseline skipped the mask-grid checks (a cell of 5 on 32 px images, a --cell-size for a
    # ViT, DropSub on a CNN trained); the paired runs accept and refuse the same options
    from masksub_kernels.training.run_setup import setup

    cnn = ["--model", "test_resnet", "--img-size", "32", "--output", str(tmp_path)]
    refused = [
        ([*cnn, "--cell-size", "5"], r"image size 32 x 32 is not divisible by the mask cell of 5 pixels"),
        ([*TINY_VIT, "--cell-size", "4", "--output", str(tmp_path)], r"cell_size is an option of the grid masks"),
        ([*cnn, "--variant", "drop"], r"variant='drop' \(DropSub / PathSub\) is defined for ViTs"),
    ]
    for argv, message in refused:
        with pytest.raises(UsageError, match=message):
            setup(build_parser().parse_args([*argv, *(["--baseline"] if baseline else [])]))
    setup(build_parser().parse_args([*cnn, "--cell-size", "8", *(["--baseline"] if baseline else [])]))


# kills run_setup.py `max(args.epochs - args.warmup_epochs, 1)` -> `max(..., 0)` (helper-237 S2): a --warmup-prefix run
# whose warm-up fills all its epochs left timm a cosine of 0 updates, which timm refuses with a bare AssertionError (a
# traceback, not a usage error); with 1 the run warms up to --lr over its updates, and the value after the last one
# (the checkpoint's, and a resume's) is --lr
def test_a_prefixed_warm_up_as_long_as_the_run_still_builds_its_schedule(tmp_path):
    from masksub_kernels.training.run_setup import setup

    argv = [*TINY_VIT, "--epochs", "2", "--warmup-epochs", "2", "--warmup-prefix", "--warmup-lr", "0", "--lr", "1e-3"]
    s = setup(build_parser().parse_args([*argv, "--limit-batches", "4", "--output", str(tmp_path)]))
    for update in range(2 * 4 + 1):  # every update of the run, all in the warm-up, and the value after the last
        s.scheduler.step_update(num_updates=update)
        assert s.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * update / 8, rel=1e-9), update


# kills run_setup.py `batches=updates_per_epoch * args.grad_accum_steps` -> `batches=batches` (helper-237 S12): 5
# micro-batches an epoch at --grad-accum-steps 2 trained a fifth whose window closed only in the next epoch, after this
# one's evaluation and checkpoint (saved with half a window's gradient pending; the schedule's updates per epoch, 2,
# not what ran); an epoch is whole windows: 4
def test_an_epoch_trains_whole_accumulation_windows(tmp_path):
    from masksub_kernels.training.run_setup import setup

    argv = [*TINY_VIT, "--limit-batches", "5", "--grad-accum-steps", "2", "--output", str(tmp_path)]
    assert setup(build_parser().parse_args(argv)).batches == 4


# helper-250's mutation audit (the mutant named in the comment)
# kills run_setup.py `init_process_group(..., timeout=DIST_TIMEOUT)` for NCCL only (M48): the existing test stubs a
# GPU machine; torchrun with --device cpu (gloo) waits as long
def test_run_setup_torchrun_on_cpus_waits_an_hour_too(monkeypatch):
    import torch
    import torch.distributed as dist

    from masksub_kernels.training import run_setup

    groups = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: groups.append((backend, kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    assert run_setup._distributed("cpu") == (0, 2, torch.device("cpu"))
    assert groups == [("gloo", {"timeout": datetime.timedelta(minutes=60)})]


# kills fa1: check_like_masksub's `_WARNED.intersection_update(warned)` dropped (a --baseline check of a model that
# is not a CNN used up the pixel fallback's once-a-process warning: a MaskSub of it later in the process was silent)
def test_a_baseline_check_leaves_the_pixel_fallback_warning_to_a_later_masksub(monkeypatch):
    import warnings

    from timm.models.mlp_mixer import MlpMixer

    from masksub_kernels.training import MaskSub, families

    monkeypatch.setattr(families, "_WARNED", set())
    mixer = MlpMixer(num_classes=3, img_size=64, patch_size=16, num_blocks=1, embed_dim=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        families.check_like_masksub(mixer, 64, "mask", None, 0.5)
        assert not caught, [str(w.message) for w in caught]
        MaskSub(mixer, mask_ratio=0.5)
    assert any("is not one of the models cut at their tokens" in str(w.message) for w in caught), caught


# Kills T08 (_create_model's retry without the unused zero rates not kept in `kwargs`: meta.create_model recorded
# drop_path_rate=0 for a DenseNet, whose rebuild from it is timm's TypeError) and T09 (meta.create_model without
# --global-pool: the rebuild a class-token model)
def test_create_model_records_the_kwargs_that_rebuild_the_model():
    import timm

    from masksub_kernels.training.run_setup import _create_model, parse_kwargs

    def build(*flags):
        args = build_parser().parse_args(list(flags))
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        return _create_model(args, 10, 3)

    kwargs = build("--model", "densenet121", "--drop-path", "0").masksub_create_kwargs
    assert "drop_path_rate" not in kwargs and (kwargs["num_classes"], kwargs["in_chans"]) == (10, 3)
    assert timm.create_model("densenet121", **kwargs).num_classes == 10
    vit = [*TINY_VIT, "--global-pool", "avg", "--fc-norm", "per-token"]
    kwargs = build(*vit).masksub_create_kwargs
    assert (kwargs["global_pool"], kwargs["fc_norm"], kwargs["num_classes"]) == ("avg", False, 10)
    assert timm.create_model("vit_tiny_patch16_224", **kwargs).global_pool == "avg"

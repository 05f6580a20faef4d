"""The training commands' options reach what they configure (helper-120's mutation sweep of the command-line layer):
per-epoch seeding, the loader, clipping and accumulation, the EMA's metrics, the logged lr and wall time, exact resume
with accumulation, Mixup and the schedule's options, the options' bounds, the samplers, the log files, the MLM
command's model, optimizer, schedule, step options and evaluation, and the entry points' exit statuses."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn", reason="the default dataset (digits) comes from scikit-learn")

from masksub_kernels.train import UsageError, build_parser, main, parse_kwargs
from masksub_kernels.training import data as data_mod
from masksub_kernels.training import engine

TINY_VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=16",
            "depth=1", "num_heads=2", "--img-size", "16", "--no-progress"]  # fmt: skip


def _rows(out) -> list[dict]:
    with open(os.path.join(out, "log.json")) as f:
        return json.load(f)["epochs"]


def test_the_run_passes_its_options_to_each_epoch_and_resumes_exactly_with_accumulation(tmp_path, monkeypatch, capsys):
    from timm.scheduler import create_scheduler_v2

    seeds, loaders, epochs = [], [], []
    real_seed, real_loader, real_epoch = engine.seed_epoch, data_mod.train_loader, engine.train_one_epoch
    monkeypatch.setattr(engine, "seed_epoch", lambda *a: seeds.append(a) or real_seed(*a))
    monkeypatch.setattr(data_mod, "train_loader", lambda *a: loaders.append(a[2:4]) or real_loader(*a))
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **k: epochs.append(k) or real_epoch(*a, **k))
    flags = [*TINY_VIT, "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32", "--limit-batches", "4",
             "--grad-accum-steps", "2", "--clip-grad", "0.5", "--model-ema", "--layer-decay", "0.5",
             "--seed", "3"]  # fmt: skip
    full = str(tmp_path / "full")
    assert main([*flags, "--keep-epoch-checkpoints", "--output", full]) == 0
    assert seeds == [(3, -1, 0), (3, 0, 0), (3, 1, 0)]  # the model's initialisation, then each epoch's
    assert loaders == [(0, 3), (1, 3)]  # each epoch's order from (epoch, seed)
    assert [(k["clip_grad"], k["accum_steps"]) for k in epochs] == [(0.5, 2), (0.5, 2)]
    rows = _rows(full)
    assert all(r["ema_val_loss"] != r["val_loss"] for r in rows)  # the EMA evaluated, not the model again
    # the logged lr is the schedule's (the first parameter group holds it x its --layer-decay scale)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, warmup_epochs=1, warmup_lr=1e-5,
                                   min_lr=1e-5, step_on_epochs=False, updates_per_epoch=2)  # fmt: skip
    sched.step_update(num_updates=2)
    assert rows[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    # resumed: the same schedule (2 updates per epoch of 4 batches), no note; the wall time goes on from the checkpoint
    resumed = str(tmp_path / "resumed")
    assert main([*flags, "--resume", f"{full}/epoch-1.pth", "--output", resumed]) == 0
    assert "note: resuming" not in capsys.readouterr().err
    with open(os.path.join(resumed, "log.json")) as f:
        assert json.load(f)["meta"]["resumes"][-1]["changed"] == []
    got, want = _rows(resumed), rows
    assert got[0] == want[0] and got[1]["wall_time_s"] - got[0]["wall_time_s"] >= got[1]["epoch_time_s"]
    a = torch.load(f"{full}/last.pth", weights_only=False)
    b = torch.load(f"{resumed}/last.pth", weights_only=False)
    for key in ("module", "ema"):
        for name, value in a[key].items():
            assert torch.equal(b[key][name], value), (key, name)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--loss", "bce", "--bce-target-thresh", "0.0"],
            {"mode": "bce", "target_threshold": 0.0, "label_smoothing": 0.1},
        ),
        ([], {"mode": "ce", "target_threshold": None, "label_smoothing": 0.0}),  # smoothed by Mixup instead
    ],
)
def test_the_baseline_takes_masksubs_main_criterion(tmp_path, monkeypatch, flags, expected):
    import masksub_kernels.training.wrapper as wrapper

    seen = {}

    class Seen(Exception):
        pass

    def spy(logits, target, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(wrapper, "supervised_loss", spy)
    with pytest.raises(Seen):
        main([*TINY_VIT, "--epochs", "1", "--batch-size", "64", "--baseline", "--mixup", "0.8", "--smoothing", "0.1",
              *flags, "--output", str(tmp_path)])  # fmt: skip
    assert seen == expected


def test_setup_passes_mixup_schedule_model_and_sampler_options(tmp_path, monkeypatch):
    from masksub_kernels.training import augment
    from masksub_kernels.training.run_setup import setup

    normalisations = []
    real = augment.build_transforms
    monkeypatch.setattr(augment, "build_transforms", lambda a, size, m, s, **k: normalisations.append((m, s)) or
                        real(a, size, m, s, **k))  # fmt: skip
    argv = [*TINY_VIT, "--mixup", "0.6", "--cutmix", "0.9", "--mixup-prob", "0.7", "--mixup-switch-prob", "0.3",
            "--epochs", "4", "--warmup-epochs", "2", "--warmup-lr", "2e-6", "--min-lr", "3e-6", "--drop", "0.25",
            "--global-pool", "avg", "--aug-repeats", "3", "--mean", "0.5", "--std", "0.25",
            "--output", str(tmp_path)]  # fmt: skip
    s = setup(build_parser().parse_args(argv))
    mixup = s.mixup
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.switch_prob) == (0.6, 0.9, 0.7, 0.3)
    # RepeatAugSampler: 1437 digits -> 1280 samples a process, 20 batches of 64 (not 1437 // 64 = 22)
    assert s.batches == 20
    sched = s.scheduler
    assert (sched.t_initial, sched.warmup_t, sched.warmup_lr_init, sched.lr_min) == (80, 40, 2e-6, 3e-6)
    assert s.model.head_drop.p == 0.25 and s.model.global_pool == "avg"
    assert normalisations == [((0.5,), (0.25,))]


def test_a_different_seed_initialises_another_model(tmp_path):
    from masksub_kernels.training.run_setup import setup

    weights = []
    for seed in ("0", "1", "0"):
        s = setup(build_parser().parse_args([*TINY_VIT, "--seed", seed, "--output", str(tmp_path)]))
        weights.append(s.model.patch_embed.proj.weight.detach().clone())
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--momentum", "1.0", "--opt", "sgd"], "--momentum must be in [0.0, 1.0), got 1.0"),
        (["--lr", "inf"], "--lr must be in (0.0, inf), got inf"),
        (["--model-ema-decay", "1.0"], "--model-ema-decay must be in [0.0, 1.0), got 1.0"),
        (["--crop-pct", "0"], "--crop-pct must be in (0.0, 1.0], got 0.0"),
        (["--reprob", "1.5"], "--reprob must be in [0.0, 1.0], got 1.5"),
        (["--limit-batches", "0"], "--limit-batches must be in [1, inf), got 0"),
        (["--aug-repeats", "-1"], "--aug-repeats must be in [0, inf), got -1"),
        (["--opt-eps", "0"], "--opt-eps must be in (0.0, inf), got 0.0"),
        (["--min-lr", "-0.5"], "--min-lr must be in [0.0, inf), got -0.5"),
        (["--mean", "0.5"], "--mean and --std go together"),
        (["--scale", "0.5", "0.2"], "--scale is a crop-area range 0 < min <= max <= 1, got [0.5, 0.2]"),
        (["--grad-accum-steps", "30"], "give 22 batch(es) of 64: fewer than --grad-accum-steps 30"),
    ],
)
def test_more_options_out_of_range(tmp_path, capsys, args, message):
    assert main([*TINY_VIT, "--epochs", "1", "--batch-size", "64", *args, "--output", str(tmp_path / "err")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masksub-train: error:") and message in err, err


def test_resume_with_a_new_schedule_sets_its_rate_and_restores_the_loss_scale(tmp_path):
    from timm.scheduler import create_scheduler_v2

    from masksub_kernels.training.resume import resume
    from masksub_kernels.training.run_setup import setup

    out = str(tmp_path / "run")
    quick = [*TINY_VIT, "--batch-size", "256", "--warmup-epochs", "0"]
    assert main([*quick, "--epochs", "1", "--output", out]) == 0
    ckpt = torch.load(f"{out}/last.pth", weights_only=False)
    ckpt["scaler"] = torch.amp.GradScaler("cpu", init_scale=1234.0).state_dict()  # as a CUDA fp16 run saves it
    torch.save(ckpt, f"{out}/scaled.pth")
    args = build_parser().parse_args([*quick, "--epochs", "3", "--resume", f"{out}/scaled.pth"])
    s = setup(args)
    s.scaler = torch.amp.GradScaler("cpu")
    assert resume(args, s)[:2] == (1, 5)
    assert s.scaler.get_scale() == 1234.0
    # the optimizer's restored rate was the old 1-epoch schedule's last (--min-lr): now the 3-epoch one's at update 5
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=3, warmup_epochs=0, min_lr=1e-5,
                                   step_on_epochs=False, updates_per_epoch=5)  # fmt: skip
    sched.step_update(num_updates=5)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


def test_resume_notes_each_changed_option_that_shapes_the_training():
    from masksub_kernels.training.resume import other_changes

    args = build_parser().parse_args([])
    old = dict(vars(args))
    changed = {"mixup": 0.8, "cutmix": 1.0, "aa": "3a", "reprob": 0.25, "drop_path": 0.1, "mask_ratio": 0.4,
               "loss": "bce", "schedule": "joint", "variant": "drop", "clip_grad": 1.0, "model_ema_decay": 0.99,
               "aug_repeats": 3, "baseline": True, "cell_size": 16, "seed": 1, "model": "resnet18"}  # fmt: skip
    for name, value in changed.items():
        setattr(args, name, value)
    notes = other_changes(old, args)
    assert sorted(note.split()[0] for note in notes) == sorted(f"--{k.replace('_', '-')}" for k in changed)
    # a checkpoint of before 2026-12-05: its --drop / --drop-path 0.0, the default then, were never passed to timm,
    # as today's default None is not: no change (helper-136); a 0 given today is one
    args = build_parser().parse_args([])
    before = {**vars(args), "drop": 0.0, "drop_path": 0.0, "deterministic": True}
    del before["rates_passed_at_zero"]
    assert other_changes(before, args) == []
    today = {**vars(args), "drop_path": 0.0}
    assert other_changes(today, args) == ["--drop-path 0.0 -> None"]
    # a checkpoint from before --drop-path-schedule trained timm's linear ramp: resumed under uniform, a note
    # (helper-142: the DeiT-III recipe's change was silent)
    del before["drop_path_schedule"]
    assert other_changes(before, args) == []
    args.drop_path_schedule = "uniform"
    assert other_changes(before, args) == ["--drop-path-schedule 'linear' -> 'uniform'"]


# ---------------------------------------------------------------------------------------------------------------
# Data and logs
# ---------------------------------------------------------------------------------------------------------------


def test_training_orders_follow_seed_epoch_and_rank():
    dataset = torch.utils.data.TensorDataset(torch.arange(600))

    def order(epoch, seed, rank=0, world=1, repeats=0):
        if world == 1 and not repeats:
            return list(data_mod.train_loader(dataset, 8, epoch, seed, 0, 1, 0, False).sampler.order)
        return list(data_mod.train_sampler(dataset, epoch, seed, rank, world, repeats))

    for world, repeats in ((1, 0), (2, 0), (1, 3)):
        base = order(0, 0, 0, world, repeats)
        assert base == order(0, 0, 0, world, repeats)
        assert base != order(1, 0, 0, world, repeats) and base != order(0, 1, 0, world, repeats), (world, repeats)
    ranks = [order(0, 0, rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == 300 and not set(ranks[0]) & set(ranks[1])
    # repeated augmentation: len // 256 * 256 samples per process (timm's selected_round)
    assert len(order(0, 0, 0, 1, 3)) == 512 and len(order(0, 0, 0, 2, 3)) == 256


def test_validation_shards_cover_the_set_once():
    dataset = torch.utils.data.TensorDataset(torch.arange(11))
    shards = [[int(x) for (b,) in data_mod.val_loader(dataset, 4, r, 3, 0, False) for x in b] for r in range(3)]
    assert sorted(x for shard in shards for x in shard) == list(range(11)) and shards[1] == [1, 4, 7, 10]


def test_digits_shift_and_normalisation():
    spec = data_mod.build_datasets(None, 32)
    assert spec.train.shift == 4 and spec.val.shift == 0  # up to img_size / 8 pixels
    images = spec.train.images  # normalised with the training split's own mean / std
    assert abs(float(images.mean())) < 1e-5 and float(images.std()) == pytest.approx(1.0, abs=1e-5)
    assert len(spec.train) == 1437 and len(spec.val) == 360


def test_validation_classes_are_the_training_folders(tmp_path):
    from PIL import Image

    for split, labels in (("train", ("a", "b")), ("val", ("b",))):  # val lacks class a: b is still class 1
        for label in labels:
            os.makedirs(tmp_path / split / label)
            Image.new("RGB", (8, 8)).save(tmp_path / split / label / "0.png")
    spec = data_mod.build_datasets(str(tmp_path), 8, 3)
    assert spec.num_classes == 2 and [t for _, t in spec.val.reader.samples] == [1]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train/a": 2, "val/a": 1}, "holds 1 class (class folders: ['a']): a classifier needs at least 2"),
        ({"train": 2, "val": 1}, "/train': '0.png' lies directly in it, not in a class folder"),
        ({"train/a": 1, "train/b": 1, "val/a": 0, "val/b": 0}, "/val' holds no images timm reads"),
        ({"train/a": 0, "train/b": 0, "val/a": 1}, "/train' holds no images timm reads"),
        ({"train/a": 1, "train/b": 1, "val/a": 1, "val/B": 1}, "has class folders that 'train/' lacks: ['B']"),
        ({"train/a": 1, "train/b": 1, "val/a": 1, "val/.ipynb_checkpoints": 0}, None),  # no images: no class
        ({"train/a": 1, "train/b": 1, "val": 1}, "/val': '0.png' lies directly in it, not in a class folder"),
        # helper-151: timm labels by the innermost folder: each of these made a class of its own, silently
        ({"train/a": 1, "train/b": 1, "train": 1, "val/a": 1}, "/train': '0.png' lies directly in it, not in a class"),
        (
            {"train/a": 1, "train/b": 1, "train/.ipynb_checkpoints": 1, "val/a": 1},
            "'.ipynb_checkpoints/0.png' is in a hidden folder, which timm would take for a class",
        ),
        (
            {"train/a/2020": 1, "train/b/2020": 1, "train/a": 1, "train/b": 1, "val/a": 1},
            "/train': 'a/2020/0.png' is in "
            "a sub-folder of a class folder: timm labels an image by its innermost folder",
        ),
        ({"train/a": 1, "train/b": 1, "val/a": 1, "val/b/x": 1}, "/val': 'b/x/0.png' is in a sub-folder of a class"),
        ({"train/a/x": 1, "train/b/x": 1, "val/a": 1, "val/b": 1}, "/train': 'a/x/0.png' is in a sub-folder"),
        (
            {"train/a": 1, "train/b": 1, "train/c": 0, "val/c": 1},
            "/train' has class folders that hold no images timm reads: ['c']",  # (helper-295: refused in train/)
        ),
    ],
)
def test_image_folders_that_cannot_train_a_classifier_are_refused(tmp_path, layout, message):
    # helper-135: one class trained to loss 0 (--baseline) or failed at its first batch; an empty split was timm's
    # traceback; a val/ folder that train/ lacks (a typo) lost its images without a word
    from PIL import Image

    for folder, images in layout.items():
        os.makedirs(tmp_path / folder, exist_ok=True)
        for i in range(images):
            Image.new("RGB", (8, 8)).save(tmp_path / folder / f"{i}.png")
    if message is None:
        assert data_mod.build_datasets(str(tmp_path), 8, 3).num_classes == 2
        return
    with pytest.raises(FileNotFoundError) as refused:
        data_mod.build_datasets(str(tmp_path), 8, 3)
    assert message in str(refused.value)


def test_an_unreadable_validation_image_is_an_error_not_its_neighbour(tmp_path):
    # helper-151: timm scored the next image (and its label) in its place, so top-1 counted that one twice
    from PIL import Image

    for folder in ("train/a", "train/b", "val/a", "val/b"):
        os.makedirs(tmp_path / folder)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "0.png")
    (tmp_path / "val" / "a" / "1.png").write_bytes(b"not a png")
    spec = data_mod.build_datasets(str(tmp_path), 8, 3)
    assert spec.val[0][1] == 0 and spec.train[0][1] == 0
    with pytest.raises(RuntimeError, match="Failed to load 1 consecutive samples"):
        spec.val[1]


def test_drop_and_drop_path_reach_the_model_at_zero_too():
    # helper-135: 0 was not passed, so a Swin kept its own drop-path 0.1 while the log said 0; by default each is
    # the model's own (helper-136: an older run resumes with the same model)
    from masksub_kernels.training.run_setup import _create_model

    def build(*flags):
        args = build_parser().parse_args(list(flags))
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        return _create_model(args, 10, 3)

    rexnet = [build("--model", "rexnet_100", *extra).drop_rate for extra in ([], ["--drop", "0"], ["--drop", "0.1"])]
    assert rexnet == [0.2, 0.0, 0.1]  # its own dropout 0.2 by default
    # a model without drop-path (DenseNet) has none for a 0 to turn off: built (--drop-path 0 on any CNN)
    assert build("--model", "densenet121", "--drop-path", "0").num_classes == 10
    with pytest.raises(UsageError, match=r"refuses one of its kwargs .* \(--model-kwargs, --drop, --drop-path"):
        build("--model", "densenet121", "--drop-path", "0.1")
    with pytest.raises(UsageError, match=r"--drop 0.0 and --model-kwargs drop_rate=0.3: pass one"):
        build("--model", "rexnet_100", "--drop", "0", "--model-kwargs", "drop_rate=0.3")

    swin = ["--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "img_size=32", "window_size=4",
            "embed_dim=16", "depths=(1,1)", "num_heads=(1,2)"]  # fmt: skip
    rates = []
    for extra in ([], ["--drop-path", "0"], ["--drop-path", "0.05"]):
        args = build_parser().parse_args([*swin, *extra])
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        model = _create_model(args, 10, 3)
        rates.append([round(float(getattr(b.drop_path1, "drop_prob", 0.0)), 3) for s in model.layers for b in s.blocks])
    assert rates == [[0.0, 0.1], [0.0, 0.0], [0.0, 0.05]]  # the model's own by default; 0 turns it off


def test_uniform_drop_path_schedule_gives_every_block_the_rate():
    # helper-141: the official DeiT-III models (deit/models_v2.py) use dpr = [drop_path_rate] * depth; timm's ramp
    # from 0 gave the recipes half the average stochastic depth
    from masksub_kernels.training.run_setup import _create_model

    def rates(*flags, kwargs=()):
        tiny = ["img_size=32", "patch_size=8", "embed_dim=32", "depth=3", "num_heads=2", *kwargs]
        args = build_parser().parse_args(["--model", "deit3_base_patch16_224", "--model-kwargs", *tiny, *flags])
        args.model_kwargs = parse_kwargs(args.model_kwargs)
        model = _create_model(args, 10, 3)
        return [round(float(getattr(getattr(b, n), "drop_prob", 0.0)), 3) for b in model.blocks
                for n in ("drop_path1", "drop_path2")]  # fmt: skip

    assert rates("--drop-path", "0.2") == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2]  # timm's linear ramp, the default
    assert rates("--drop-path", "0.2", "--drop-path-schedule", "uniform") == [0.2] * 6
    assert rates("--drop-path-schedule", "uniform", kwargs=["drop_path_rate=0.1"]) == [0.1] * 6
    with pytest.raises(UsageError, match="--drop-path-schedule uniform sets every block's drop-path to the rate"):
        rates("--drop-path-schedule", "uniform")
    args = build_parser().parse_args(["--model", "resnet10t", "--drop-path", "0.1", "--drop-path-schedule", "uniform"])
    args.model_kwargs = parse_kwargs(args.model_kwargs)
    refused = r"--drop-path-schedule uniform is for models with .blocks \(ViTs\): ResNet has no drop-path slots"
    with pytest.raises(UsageError, match=refused):
        _create_model(args, 10, 3)


def test_log_files_hold_the_documented_columns(tmp_path):
    from masksub_kernels.training.runlog import COLUMNS, write_log

    assert COLUMNS == ("epoch", "lr", "loss", "loss_main", "loss_sub", "val_loss", "top1", "top5", "ema_val_loss",
                       "ema_top1", "ema_top5", "images_per_s", "epoch_time_s", "wall_time_s")  # fmt: skip
    write_log(str(tmp_path), [{"epoch": 1, "loss_sub": None, "top1": 50.0}], {"k": 1})
    with open(tmp_path / "log.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["epoch"] == "1" and row["loss_sub"] == "" and row["ema_top1"] == "" and row["top1"] == "50.0"
    with open(tmp_path / "log.json") as f:
        assert json.load(f) == {"meta": {"k": 1}, "epochs": [{"epoch": 1, "loss_sub": None, "top1": 50.0}]}


# ---------------------------------------------------------------------------------------------------------------
# masksub-train-mlm
# ---------------------------------------------------------------------------------------------------------------


def test_mlm_defaults_are_berts():
    from masksub_kernels.training import mlm_cli

    args = mlm_cli.build_parser().parse_args([])
    assert (args.mlm_probability, args.mask_ratio, args.sub_fill, args.seq_len, mlm_cli.DEFAULT_VOCAB_SIZE) == (
        0.15, 0.5, "drop", 64, 8192)  # fmt: skip
    assert args.vocab_size is None  # None: not given (a note where a vocabulary file's size differs from one given)
    assert "default 8192" in " ".join(mlm_cli.build_parser().format_help().split())
    assert (args.lr, args.warmup_steps, args.weight_decay, args.clip_grad, args.steps) == (1e-3, 100, 0.01, 1.0, 2000)


def test_mlm_model_optimizer_and_schedule():
    pytest.importorskip("transformers")
    from masksub_kernels.training import mlm_cli

    argv = ["--layers", "1", "--width", "16", "--heads", "2", "--intermediate", "24", "--dropout", "0.2", "--seq-len",
            "16", "--weight-decay", "0.3"]  # fmt: skip
    args = mlm_cli.build_parser().parse_args(argv)
    model = mlm_cli._model(args, mlm_cli.Vocab(120, 4, 0))
    config = model.config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.2, 0.2)
    assert (config.intermediate_size, config.max_position_embeddings, config.mask_token_id) == (24, 16, 4)
    optimizer = mlm_cli._optimizer(model, args)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():  # BERT: no decay on biases and LayerNorm weights
        assert decay[id(param)] == (0.3 if param.dim() >= 2 else 0.0), name
    assert all(g["eps"] == 1e-6 and g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)
    # linear warm-up over 2 steps (the first step already at 1/2), then linear decay to 0 at step 6
    assert [mlm_cli._lr_factor(s, 2, 6) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert mlm_cli._epoch_order(50, 0, 0).tolist() != mlm_cli._epoch_order(50, 0, 1).tolist()  # reshuffled per epoch


def test_mlm_seed_initialises_the_model():
    pytest.importorskip("transformers")
    from masksub_kernels.training import mlm_cli

    blocks = torch.randint(5, 64, (8, 16), dtype=torch.int32)
    blocks[:, 0], blocks[:, -1] = 2, 3  # [CLS], [SEP]: 2 special tokens a block
    train = mlm_cli.mlm_blocks.TrainBlocks(blocks, torch.tensor([0, 2, 3]), torch.device("cpu"))
    weights = []
    for seed in ("0", "1", "0"):
        argv = ["--layers", "1", "--width", "16", "--heads", "2", "--seq-len", "16", "--mask-ratio", "0.25",
                "--batch-size", "4", "--seed", seed]  # fmt: skip
        args = mlm_cli.build_parser().parse_args(argv)
        built = mlm_cli._build(args, mlm_cli.Vocab(64, 4, 0), train, None, 1, torch.device("cpu"), 0, {})
        weights.append(built[0].model.bert.embeddings.word_embeddings.weight.detach().clone())
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("clip", ["0.5", "0"])
def test_mlm_step_options_reach_train_step(tmp_path, monkeypatch, clip):
    pytest.importorskip("transformers")
    from masksub_kernels.training import MaskSub, text_data

    seen = {}

    class Seen(Exception):
        pass

    def spy(self, batch, target, optimizer, **kwargs):
        seen.update(kwargs, sub_fill=self.sub_fill, mask_ratio=self.mask_ratio)
        raise Seen

    monkeypatch.setattr(MaskSub, "train_step", spy)
    docs = [d for d in text_data.stdlib_docstrings() if "\n\n" not in d][:200]
    (tmp_path / "a.txt").write_text("\n\n".join(docs), encoding="utf-8")
    from masksub_kernels.training.mlm_cli import main as mlm_main

    argv = ["--data-dir", str(tmp_path), "--vocab-size", "120", "--seq-len", "16", "--layers", "1", "--width", "16",
            "--heads", "2", "--batch-size", "4", "--steps", "2", "--eval-every", "1", "--mask-ratio", "0.2",
            "--sub-fill", "mask", "--schedule", "joint", "--clip-grad", clip, "--accum-steps", "2",
            "--output", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(Seen):
        mlm_main(argv)
    assert (seen["clip_grad"], seen["schedule"], seen["accum_steps"]) == (float(clip) or None, "joint", 2)
    assert (seen["sub_fill"], seen["mask_ratio"]) == ("mask", 0.2)


def test_mlm_evaluation_weights_batches_by_their_tokens():
    pytest.importorskip("transformers")
    from masksub_kernels.training import MaskSub, mlm_cli

    torch.manual_seed(0)
    args = mlm_cli.build_parser().parse_args(["--layers", "1", "--width", "16", "--heads", "2", "--seq-len", "16",
                                              "--mlm-probability", "0.3"])  # fmt: skip
    vocab = mlm_cli.Vocab(64, 4, 0)
    ms = MaskSub(mlm_cli._model(args, vocab))
    blocks = torch.randint(5, 64, (7, 16))
    special = torch.zeros(7, 16, dtype=torch.bool)
    data = mlm_cli._corrupt(args, vocab, blocks, special, seed=1)
    with torch.no_grad():  # half the targets the model's own predictions: an accuracy of about 50%, not 0
        predicted = ms.model(input_ids=data["input_ids"]).logits.argmax(-1)
    data["labels"] = torch.where(torch.rand(7, 16) < 0.5, data["labels"], predicted.where(data["labels"] != -100, -100))
    whole = ms.eval()(data)
    assert 0 < whole["correct"] < whole["count"]
    want = {"val_loss": float(whole["loss"]), "val_acc": 100.0 * float(whole["correct"]) / float(whole["count"])}
    args.batch_size = 3  # batches of 3, 3 and 1 blocks, each predicting another number of tokens
    got = mlm_cli._evaluate(args, ms, vocab, data, 0, 1, torch.device("cpu"), contextlib.nullcontext)
    assert got == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Entry points: the exit status of a usage error
# ---------------------------------------------------------------------------------------------------------------


def test_module_entry_points_exit_2_on_a_usage_error(tmp_path):
    for module, argv in (
        ("masksub_kernels.train", ["--epochs", "0", "--output", str(tmp_path)]),
        ("masksub_kernels.training.mlm_cli", ["--steps", "0", "--output", str(tmp_path)]),
        ("masksub_kernels.training.replication", []),  # RUNS_DIR OUT_DIR missing
    ):
        result = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (module, result.stderr[-2000:])


def test_mlm_batches_walk_each_epochs_permutation_in_whole_steps():
    # (helper-193: no run reached a second epoch with accumulation, where steps counted in micro-batches left the
    # last parts of a step without blocks)
    from masksub_kernels.training import mlm_cli

    args = mlm_cli.build_parser().parse_args(
        ["--batch-size", "2", "--accum-steps", "2", "--seq-len", "6", "--seed", "3"]
    )
    blocks = torch.arange(10 * 6, dtype=torch.int32).view(10, 6)  # block i holds 6 i .. 6 i + 5
    # every id special: nothing corrupted, the batch shows which blocks it took
    train = mlm_cli.mlm_blocks.TrainBlocks(blocks, torch.arange(10 * 6), torch.device("cpu"))
    vocab = mlm_cli.Vocab(64, 4, 0)
    taken = {}
    for step in range(4):  # 10 blocks, 4 a step: 2 steps an epoch, the last 2 blocks of each permutation unused
        for part in range(2):
            batch = mlm_cli._train_batch(args, vocab, train, step, part, parts=2)
            taken[step, part] = (batch["input_ids"][:, 0] // 6).tolist()
    for epoch in range(2):
        order = mlm_cli._epoch_order(10, 3, epoch).tolist()
        got = [b for step in (2 * epoch, 2 * epoch + 1) for part in range(2) for b in taken[step, part]]
        assert got == order[:8], (epoch, taken)


# kills resume.py:43 `isinstance(value, (list, tuple))` -> `isinstance(value, list)`: a --config file gives
# model-kwargs lists (depths: [1, 1]), the command line tuples (depths=(1,1)); the same model is no change
def test_resume_takes_a_model_kwargs_list_and_tuple_for_the_same_value():
    from masksub_kernels.training.cli import build_parser
    from masksub_kernels.training.resume import other_changes

    args = build_parser().parse_args([])
    old = {**vars(args), "model_kwargs": {"depths": [1, 1], "img_size": 32}, "scale": [0.08, 1.0]}
    args.model_kwargs, args.scale = {"depths": (1, 1), "img_size": 32}, (0.08, 1.0)
    assert other_changes(old, args) == []
    args.model_kwargs = {"depths": (1, 2), "img_size": 32}
    assert other_changes(old, args) == ["--model-kwargs {'depths': [1, 1], 'img_size': 32} -> {'depths': (1, 2), "
                                        "'img_size': 32}"]  # fmt: skip


# kills cli.py:312 `s.scaler.state_dict() if s.scaler is not None else None` -> `None`: on the CPU no run has a
# GradScaler, so no test saw a checkpoint's loss scale (resume's restore is tested on a hand-made checkpoint); a CUDA
# float16 run resumed at the default scale, its first steps' gradients skipped as overflows
def test_a_runs_checkpoint_holds_its_loss_scale(tmp_path, monkeypatch):
    from masksub_kernels.training import cli

    real_setup = cli.setup

    def with_a_scaler(args):
        s = real_setup(args)
        s.scaler = torch.amp.GradScaler("cpu", init_scale=1234.0)  # as a CUDA --amp float16 run has one
        return s

    monkeypatch.setattr(cli, "setup", with_a_scaler)
    out = str(tmp_path / "run")
    quick = ["--batch-size", "256", "--warmup-epochs", "0", "--no-progress"]
    assert main([*TINY_VIT, *quick, "--epochs", "1", "--limit-batches", "1", "--output", out]) == 0
    saved = torch.load(os.path.join(out, "last.pth"), weights_only=False)["scaler"]
    assert saved is not None and saved["scale"] == 1234.0


# kills cli.py:202 `_Truncated.__len__` -> `len(self.loader)`: with --limit-batches the progress bar's total (the
# only reader of the length) was the whole loader's
def test_a_truncated_loader_has_the_length_it_yields():
    from masksub_kernels.training.cli import _Truncated

    batches = _Truncated(list(range(10)), 3)
    assert len(batches) == 3 and list(batches) == [0, 1, 2]


# kills cli.py `group["lr"] / group.get("lr_scale", 1.0)` -> `group["lr"]` (helper-237 S21): with --layer-decay the
# first group is a stem group (cls token, position embedding: lr_scale d ** (depth + 1)), so log.csv's lr column showed
# the stem's rate, not the schedule's, and no test ran the log under --layer-decay
def test_the_logged_lr_is_the_schedules_under_layer_decay():
    from masksub_kernels.training.cli import _base_lr

    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    groups = [
        {"params": params[:1], "lr": 2.5e-4, "lr_scale": 0.25},
        {"params": params[1:], "lr": 1e-3, "lr_scale": 1.0},
    ]
    assert _base_lr(torch.optim.SGD(groups, lr=1e-3)) == pytest.approx(1e-3)

"""training/engine.py: evaluate and train_one_epoch on their edges (helper-171's mutation audit): a model in
eval mode left so, fewer than five classes, empty loaders, the progress bar's interval; the plain step's autocast,
scaler, clipping and reported loss, the loss meaned over ranks, evaluation in fp32 without autograd, channels-last
batches (helper-229's)."""

import functools

import pytest
import torch
import torch.nn.functional as F
from _models import batch, tiny_vit

from masksub_kernels.training import MaskSub, engine
from masksub_kernels.training.engine import PlainStep, evaluate, train_one_epoch
from masksub_kernels.training.wrapper import supervised_loss

CPU = torch.device("cpu")


class Fixed(torch.nn.Module):  # its images are its logits
    def forward(self, images):
        return images


def test_evaluate_leaves_an_eval_mode_model_in_eval_mode():  # engine.py:185 model.train(was_training)
    fixed = Fixed().eval()
    evaluate(fixed, [(torch.randn(2, 7), torch.tensor([0, 1]))], device=torch.device("cpu"))
    assert not fixed.training


def test_evaluate_with_fewer_than_five_classes():  # engine.py:178 k = min(5, C)
    logits = torch.tensor([[3.0, 2, 1], [3.0, 2, 1]])
    metrics = evaluate(Fixed(), [(logits, torch.tensor([0, 2]))], device=torch.device("cpu"))
    assert metrics["top1"] == pytest.approx(50.0) and metrics["top5"] == pytest.approx(100.0)


def test_empty_loaders_give_zeros_not_a_division_by_zero():  # engine.py:150 and :187 max(count, 1)
    metrics = evaluate(Fixed(), [], device=torch.device("cpu"))
    assert metrics == {"val_loss": 0.0, "top1": 0.0, "top5": 0.0}
    model = torch.nn.Linear(3, 2)
    stats = train_one_epoch(PlainStep(model, supervised_loss), [], torch.optim.SGD(model.parameters(), lr=0.1),
                            device=torch.device("cpu"))  # fmt: skip
    assert stats.loss == 0.0 and stats.num_updates == 0


def test_progress_bar_shows_the_loss_every_log_interval_steps(monkeypatch):  # engine.py:140 (index + 1) % n
    postfixes = []

    class Bar:
        def __init__(self, **kwargs):
            pass

        def update(self, n):
            pass

        def set_postfix(self, **kwargs):
            postfixes.append(kwargs)

        def close(self):
            pass

    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", Bar)  # what train_one_epoch imports
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loader = [(torch.randn(2, 3), torch.tensor([0, 1])) for _ in range(4)]
    train_one_epoch(PlainStep(model, supervised_loss), loader, torch.optim.SGD(model.parameters(), lr=0.1),
                    device=torch.device("cpu"), progress=True, log_interval=3)  # fmt: skip
    assert len(postfixes) == 1  # after the 3rd step only


# helper-206's second-pass mutation audit of wrapper.py, engine.py and schedules.py' train step
class _ModeRecorder(torch.nn.Module):  # its images are its logits; it records the mode of each forward
    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, images):
        self.modes.append(self.training)
        return images


# kills engine.py:168 `model.eval()` dropped: a model left in train mode was validated in train mode (dropout,
# BatchNorm batch statistics; a MaskSub wrapper in train mode runs its joint step, which needs a target)
def test_evaluate_runs_the_model_in_eval_mode_and_restores_train_mode():
    model = _ModeRecorder().train()
    evaluate(model, [(torch.randn(2, 7), torch.tensor([0, 1]))], device=CPU)
    assert model.modes == [False] and model.training


# kills engine.py:130 `sums[3] += 1` -> `sums[3] += images.shape[0]` (the means over micro-batches divided by the
# number of images) and engine.py:125 `sums[0] += out['loss']` -> `out['loss_main']`, :127-128 `has_sub` never set
# (the MaskSub epoch logged no loss_sub): the epoch's three means are those of its steps' outputs
def test_train_one_epoch_logs_the_mean_of_each_loss_over_its_micro_batches():
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit(), sub_weight=0.25).train()
    loader = [batch("vit", seed=i, dtype=torch.float32) for i in range(3)]
    outs = []

    def step(images, target, optimizer, **kwargs):
        out = ms.train_step(images, target, optimizer, seed=len(outs), **kwargs)
        outs.append(out)
        return out

    stats = train_one_epoch(step, loader, torch.optim.SGD(ms.parameters(), lr=0.0), device=CPU)
    for key in ("loss", "loss_main", "loss_sub"):
        want = sum(float(out[key]) for out in outs) / len(outs)
        assert abs(getattr(stats, key) - want) < 1e-6, key
    assert stats.loss != stats.loss_main  # the weighted total (1/2, 1/4), not the main term


# kills engine.py:120-121 dropped (`mixup` never called): the step gets the mixed images and targets
def test_train_one_epoch_hands_the_mixed_batch_to_the_step():
    seen = []

    def mixup(images, target):
        return images.flip(0), torch.nn.functional.one_hot(target, 3).float() * 0.5 + 0.5 / 3

    def step(images, target, optimizer, **kwargs):
        seen.append((images, target))
        return {"loss": torch.zeros(()), "loss_main": torch.zeros(()), "stepped": True}

    images, labels = torch.randn(2, 3), torch.tensor([0, 2])
    model = torch.nn.Linear(3, 3)
    train_one_epoch(step, [(images, labels)], torch.optim.SGD(model.parameters(), lr=0.1), device=CPU, mixup=mixup)
    assert torch.equal(seen[0][0], images.flip(0)) and seen[0][1].shape == (2, 3)


# kills engine.py:155 `/ world` dropped: each rank's seconds are summed by the all-reduce, so the wall time is their
# mean and the throughput is the ranks' images over it (2 identical ranks: twice one rank's), not over their sum
def test_throughput_under_ddp_divides_the_summed_seconds_by_the_world_size(monkeypatch):
    monkeypatch.setattr(engine, "_all_reduce", lambda values: values * 2)  # two ranks that did the same
    monkeypatch.setattr(engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(engine.dist, "get_world_size", lambda: 2)
    model = torch.nn.Linear(3, 2)
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    stats = train_one_epoch(PlainStep(model, supervised_loss), loader, torch.optim.SGD(model.parameters(), lr=0.1),
                            device=CPU)  # fmt: skip
    assert abs(stats.images_per_s * stats.seconds / 8 - 1) < 1e-9  # 8 images over one rank's seconds


# kills engine.py:175 `with autocast():` dropped in evaluate: the command's --amp validation ran in fp32
def test_evaluate_runs_the_forward_under_the_autocast_it_is_given():
    class AutocastRecorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.autocast = []

        def forward(self, images):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return images

    model = AutocastRecorder()
    bf16 = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    evaluate(model, [(torch.randn(2, 7), torch.tensor([0, 1]))], device=CPU, autocast=bf16)
    assert model.autocast == [True]


# helper-218's third mutation audit of the image command's data and augmentation pipeline (53 mutants)


# Kills engine.py evaluate's denominators and ranks: the count from the loader's batch_size (the last partial
# batch counted whole: 5 images read as 8), top-5 cut to top-4, and the loss's reduction="sum" -> "mean" (a mean
# of batch means divided by the image count). Five images of six classes, batches of 4 + 1, from a DataLoader.
def test_evaluate_counts_the_last_partial_batch_and_ranks_five():
    import torch.nn.functional as F

    from masksub_kernels.training.engine import evaluate

    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1]]).repeat(5, 1)
    target = torch.tensor([0, 4, 5, 0, 1])  # ranks 1, 5, 6, 1, 2: top-1 2 of 5, top-5 4 of 5
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, target), batch_size=4)
    metrics = evaluate(Fixed(), loader, device=torch.device("cpu"))
    assert metrics["top1"] == pytest.approx(40.0) and metrics["top5"] == pytest.approx(80.0)
    assert metrics["val_loss"] == pytest.approx(float(F.cross_entropy(logits, target)))


# helper-229 (the training loop's mutation audit: 39 mutants, 10 real gaps, no bug)


# Kills engine.py:55 PlainStep's `with autocast():` dropped (the --baseline
# --amp run trained in fp32), :59 `scaler.scale(...)` dropped (the scaler's step then unscaled gradients that were
# never scaled: 2^10 times too small) and :62 `optimizer_step(..., clip_grad)` -> `None` (the baseline's --clip-grad
# ignored), and the reported loss the window's share (`scaled`) instead of the micro-batch's own. One step of a
# PlainStep under a GradScaler, bf16 autocast and clipping is the plain step: forward under autocast, clip, SGD.
def test_plain_step_runs_the_forward_under_autocast_and_scales_and_clips_the_step():
    class Recorder(torch.nn.Linear):
        autocast: list

        def forward(self, images):
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return super().forward(images)

    torch.manual_seed(0)
    model = Recorder(6, 3)
    model.autocast = []
    reference = torch.nn.Linear(6, 3)
    reference.load_state_dict(model.state_dict())
    images, target = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    bf16 = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    out = PlainStep(model, supervised_loss)(
        images, target, torch.optim.SGD(model.parameters(), lr=1.0), scaler=scaler, clip_grad=1e-2, autocast=bf16
    )
    assert out["stepped"] and model.autocast == [True]
    with bf16():
        loss = supervised_loss(reference(images), target)
    loss.backward()
    assert torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e-2) > 1e-2  # the clip is active
    torch.optim.SGD(reference.parameters(), lr=1.0).step()
    assert float(out["loss"]) == pytest.approx(float(loss.detach()))
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)


# Kills engine.py:148 `sums = _all_reduce(sums)` dropped: under torchrun each
# rank logged the mean loss of its own micro-batches, not the epoch's over all ranks. A fake second rank that ran one
# micro-batch of loss 3 (and saw 4 images): the logged means are over both ranks' micro-batches.
def test_train_one_epoch_means_the_losses_over_every_ranks_micro_batches(monkeypatch):
    other = {
        4: torch.tensor([3.0, 3.0, 0.0, 1.0], dtype=torch.float64),
        2: torch.tensor([4.0, 0.0], dtype=torch.float64),
    }
    monkeypatch.setattr(engine, "_all_reduce", lambda values: values + other[len(values)])
    monkeypatch.setattr(engine.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(engine.dist, "get_world_size", lambda: 2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    losses = []

    def step(images, target, optimizer, **kwargs):
        out = PlainStep(model, supervised_loss)(images, target, optimizer, **kwargs)
        losses.append(float(out["loss"]))
        return out

    stats = train_one_epoch(step, loader, torch.optim.SGD(model.parameters(), lr=0.0), device=CPU)
    assert stats.loss == pytest.approx((losses[0] + 3.0) / 2) and stats.loss_main == pytest.approx(stats.loss)


# Kills engine.py:177 `logits = logits.float()` dropped: a model that returns
# bf16 logits under --amp had its cross-entropy summed in bf16 (8 bits of mantissa: the validation loss of a whole
# shard rounded to ~0.4 %). The loss is that of the logits in fp32.
def test_evaluate_sums_the_loss_of_low_precision_logits_in_fp32():
    torch.manual_seed(0)
    logits = torch.randn(300, 10).bfloat16()
    target = torch.randint(0, 10, (300,))
    metrics = evaluate(Fixed(), [(logits, target)], device=CPU)
    assert metrics["val_loss"] == pytest.approx(float(F.cross_entropy(logits.float(), target)), rel=1e-6)


# Kills engine.py:161 `@torch.no_grad()` dropped: validation built the
# autograd graph of every batch (activations kept: the memory of a training step, for nothing).
def test_evaluate_runs_the_model_without_autograd():
    class GradModeRecorder(torch.nn.Linear):
        modes: list

        def forward(self, images):
            self.modes.append(torch.is_grad_enabled())
            return super().forward(images)

    model = GradModeRecorder(7, 3)
    model.modes = []
    evaluate(model, [(torch.randn(2, 7), torch.tensor([0, 1]))], device=CPU)
    assert model.modes == [False] and torch.is_grad_enabled()


# Kills engine.py:63 `loss = loss.detach()` -> `scaled.detach()`: with
# --grad-accum-steps A the baseline's logged loss was the micro-batch's share of the window (1/A of it), and its
# epoch mean A times too small beside MaskSub's. Each micro-step reports its own micro-batch's loss.
def test_plain_step_reports_each_micro_batchs_own_loss_under_accumulation():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    step, optimizer = PlainStep(model, supervised_loss), torch.optim.SGD(model.parameters(), lr=0.0)
    for _ in range(2):
        images, target = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
        out = step(images, target, optimizer, accum_steps=2)
        assert float(out["loss"]) == pytest.approx(float(supervised_loss(model(images), target).detach()))


# Kills engine.py:118-119 and :173-174 dropped (`--channels-last` ignored in
# training or in validation: the model converted to NHWC ran on NCHW batches, each convolution converting its
# input): the step and the model in evaluate get the batch in channels_last memory format, and only with the flag.
def test_train_one_epoch_and_evaluate_hand_channels_last_batches_to_the_model():
    formats = []

    def step(images, target, optimizer, **kwargs):
        formats.append(images.is_contiguous(memory_format=torch.channels_last))
        return {"loss": torch.zeros(()), "loss_main": torch.zeros(()), "stepped": True}

    model = torch.nn.Linear(3, 3)
    loader = [(torch.randn(2, 3, 4, 4), torch.tensor([0, 2]))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(step, loader, optimizer, device=CPU, channels_last=True)
    train_one_epoch(step, loader, optimizer, device=CPU)
    assert formats == [True, False]

    class FormatRecorder(torch.nn.Module):
        def forward(self, images):
            formats.append(images.is_contiguous(memory_format=torch.channels_last))
            return images.flatten(1)

    formats.clear()
    evaluate(FormatRecorder(), loader, device=CPU, channels_last=True)
    evaluate(FormatRecorder(), loader, device=CPU)
    assert formats == [True, False]

"""train_step: gradient accumulation, GradScaler, clipping, autocast, channels_last, torch.compile, no host sync."""

import copy
import functools
import types

import pytest
import torch
from _models import (
    assert_grads_close,
    batch,
    grads,
    reference_loss,
    reference_vit_sub,
    tiny_resnet,
    tiny_swin,
    tiny_vit,
)

import masksub_kernels as mk
from masksub_kernels.training import MaskSub
from masksub_kernels.training.schedules import check_optimizer_params, optimizer_step


def _vit_masksub(dtype=torch.float64, **kwargs) -> MaskSub:
    torch.manual_seed(0)
    return MaskSub(tiny_vit().to(dtype), **kwargs).train()


@pytest.mark.parametrize("clip_grad", [None, 0.05])
def test_accumulating_two_steps_equals_one_step_on_the_doubled_batch(clip_grad):
    ms = _vit_masksub()
    reference = copy.deepcopy(ms.model)
    (x1, y1), (x2, y2) = batch("vit", seed=1), batch("vit", seed=2)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.5)
    first = ms.train_step(x1, y1, optimizer, accum_steps=2, seed=11, clip_grad=clip_grad)
    assert first["stepped"] is False
    second = ms.train_step(x2, y2, optimizer, accum_steps=2, seed=12, clip_grad=clip_grad)
    assert second["stepped"] is True

    # One step on the doubled batch, whose sub-branch keeps the same tokens (rows 0-3: seed 11, rows 4-7: seed 12).
    images, target = torch.cat([x1, x2]), torch.cat([y1, y2])
    ids = torch.cat([mk.random_keep_indices(4, 16, 8, seed=11), mk.random_keep_indices(4, 16, 8, seed=12)])
    main = reference(images)
    loss, crit_main, crit_sub = reference_loss(main, reference_vit_sub(reference, images, ids), target)
    loss.backward()
    if clip_grad is not None:
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip_grad)
        assert norm > clip_grad  # the clip is active
    want = {f"model.{name}": g for name, g in grads(reference).items()}
    assert_grads_close(grads(ms), want)
    torch.optim.SGD(reference.parameters(), lr=0.5).step()
    for (name, p), q in zip(ms.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9, msg=name)
    # Logged values are per micro-batch: their mean is the doubled batch's.
    torch.testing.assert_close((first["loss_main"] + second["loss_main"]) / 2, crit_main.float())
    torch.testing.assert_close((first["loss_sub"] + second["loss_sub"]) / 2, crit_sub.float())


def test_accumulation_window_restarts_after_each_step():
    ms = _vit_masksub()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    stepped = [ms.train_step(*batch("vit", seed=i), optimizer, accum_steps=3)["stepped"] for i in range(6)]
    assert stepped == [False, False, True, False, False, True]
    with pytest.raises(ValueError, match="accum_steps"):
        ms.train_step(*batch("vit"), optimizer, accum_steps=0)
    with pytest.raises(ValueError, match="schedule"):
        ms.train_step(*batch("vit"), optimizer, schedule="both")
    with pytest.raises(TypeError, match=r"optimizer must be an optimizer .* got list"):
        ms.train_step(*batch("vit"), list(ms.parameters()))
    duck = types.SimpleNamespace(
        param_groups=optimizer.param_groups, step=optimizer.step, zero_grad=optimizer.zero_grad
    )
    assert ms.train_step(*batch("vit"), duck)["stepped"]  # a duck-typed optimizer (DeepSpeed's) still trains
    with pytest.raises(TypeError, match=r"autocast must be a context-manager factory .* got str 'bf16'"):
        ms.train_step(*batch("vit"), optimizer, autocast="bf16")
    with pytest.raises(RuntimeError, match="train mode"):
        ms.eval().train_step(*batch("vit"), optimizer)


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_grad_scaler_with_clipping_matches_unscaled_step(schedule):
    images, target = batch("vit")
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        ms = _vit_masksub()
        optimizer = torch.optim.SGD(ms.parameters(), lr=0.5)
        ms.train_step(images, target, optimizer, scaler=scaler, clip_grad=0.05, seed=3, schedule=schedule)
        results.append([p.detach().clone() for p in ms.parameters()])
    for scaled, plain in zip(*results):
        torch.testing.assert_close(scaled, plain, rtol=1e-12, atol=1e-14)  # scaling by 2^k is exact


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_bf16_autocast_runs_close_to_fp32(schedule):
    images, target = batch("vit", dtype=torch.float32)
    ms = _vit_masksub(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms(images, target, seed=4)
    assert out["logits"].dtype == torch.bfloat16 and out["loss"].dtype == torch.float32
    reference = _vit_masksub(torch.float32)
    reference(images, target, seed=4)["loss"].backward()
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    step = ms.train_step(images, target, optimizer, seed=4, autocast=autocast, schedule=schedule)
    torch.testing.assert_close(step["loss"], out["loss"], rtol=2e-2, atol=2e-2)
    for (name, got), want in zip(grads(ms).items(), grads(reference).values()):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=0.1, atol=3e-2 * want.abs().max().item() + 1e-4, msg=name)


def test_fp16_autocast_with_grad_scaler_steps():
    ms = MaskSub(tiny_swin()).train()
    images, target = batch("swin", dtype=torch.float32)
    optimizer = torch.optim.AdamW(ms.parameters(), lr=1e-3)
    before = ms.mask_token.detach().clone()
    scaler = torch.amp.GradScaler("cpu")
    out = ms.train_step(
        images, target, optimizer, scaler=scaler, clip_grad=1.0, seed=1,
        autocast=functools.partial(torch.autocast, "cpu", dtype=torch.float16),
    )  # fmt: skip
    assert out["logits"].dtype == torch.float16 and torch.isfinite(out["loss"])
    assert not torch.equal(ms.mask_token, before)  # the mask token trained (the step was not skipped)


def test_channels_last_gives_the_same_step():
    torch.manual_seed(0)
    ms = MaskSub(tiny_resnet().double()).train()
    images, target = batch("resnet")
    contiguous = ms(images, target, seed=9)
    last = ms(images.contiguous(memory_format=torch.channels_last), target, seed=9)
    torch.testing.assert_close(last["loss"], contiguous["loss"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(last["logits"], contiguous["logits"])


@pytest.mark.parametrize("variant", ["mask", "path"])
def test_torch_compiled_model_gives_the_same_loss_and_gradients(variant):
    torch.manual_seed(0)
    model = tiny_vit().double()
    compiled = MaskSub(torch.compile(copy.deepcopy(model), backend="eager"), variant=variant).train()
    eager = MaskSub(model, variant=variant).train()
    assert compiled.family == "vit" and compiled.inner_model is not compiled.model
    images, target = batch("vit")
    for ms in (compiled, eager):
        torch.manual_seed(1)  # the same drop-path draws for PathSub
        ms.out = ms(images, target, seed=5)
        ms.out["loss"].backward()
    assert compiled._compiled_sub is not None  # the sub-branch ran under the model's dynamo context
    torch.testing.assert_close(compiled.out["loss"], eager.out["loss"])
    want = {name.replace("model.", "model._orig_mod.", 1): g for name, g in grads(eager).items()}
    assert_grads_close(grads(compiled), want)
    assert compiled.no_weight_decay() == {n.replace("model.", "model._orig_mod.", 1) for n in eager.no_weight_decay()}


@pytest.mark.parametrize("family", ["vit", "mlm"])
def test_a_compiled_sub_branch_takes_its_seed_as_a_tensor(family):
    # helper-249: an int seed reached the compiled sub-branch as a symbolic int, per whose value torch.compile's
    # reduce-overhead records a new CUDA graph (each step: a new seed); it gets a one-element int64 tensor on the
    # batch's device instead, which gives the same mask
    torch.manual_seed(0)
    if family == "vit":
        model, images = tiny_vit().double(), batch("vit")[0]
    else:
        from test_mlm import make_batch, tiny_bert

        model, images = tiny_bert(), make_batch(batch=2, seed=3)
    compiled, eager = MaskSub(torch.compile(copy.deepcopy(model), backend="eager")), MaskSub(model)
    compiled.sub_logits(images, 5)  # builds the compiled sub-branch
    seen, real = [], compiled._compiled_sub
    object.__setattr__(compiled, "_compiled_sub", lambda x, seed: seen.append(seed) or real(x, seed))
    got = compiled.sub_logits(images, 5)
    (seed,) = seen
    assert isinstance(seed, torch.Tensor) and seed.dtype == torch.int64 and seed.tolist() == [5]
    want = eager.sub_logits(images, 5)
    if family == "mlm":  # (head inputs, positions, ...): the hidden rows
        got, want = got.hidden, want.hidden
    torch.testing.assert_close(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("schedule", ["sequential", "joint"])
@pytest.mark.parametrize(("family", "amp"), [("swin", None), ("vit", torch.bfloat16), ("swin", torch.bfloat16),
                                             ("resnet", torch.bfloat16)])  # fmt: skip
def test_train_step_does_not_synchronise_with_the_gpu(schedule, family, amp):
    # helper-249's device check: each family's step on CUDA, under bf16 autocast, channels_last for the grid
    # families, reads nothing back from the GPU (a host sync raises), and trains finite
    torch.manual_seed(0)
    build = {"vit": tiny_vit, "swin": tiny_swin, "resnet": tiny_resnet}[family]
    layout = torch.contiguous_format if family == "vit" else torch.channels_last
    ms = MaskSub(build().cuda().to(memory_format=layout)).train()
    images, target = (t.cuda() for t in batch(family, dtype=torch.float32))
    images = images.contiguous(memory_format=layout)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1, foreach=True)
    autocast = functools.partial(torch.autocast, "cuda", dtype=amp) if amp is not None else None
    step = functools.partial(ms.train_step, images, target, optimizer, clip_grad=1.0, schedule=schedule,
                             autocast=autocast)  # fmt: skip
    step(seed=1)  # warm-up (allocations)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [step(seed=2 + i, accum_steps=2) for i in range(2)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(out["loss"]).item() for out in outs)
    assert all(torch.isfinite(p).all() for p in ms.parameters())


def test_a_checked_optimizer_is_forgotten_when_collected():
    # helper-113: the checked optimizers were kept by id, so a new optimizer at a freed one's address skipped its
    # checks (a transformers Swin's optimizer without the mask token went through)
    import gc

    from masksub_kernels.training.schedules import CheckedOptimizers

    checked = CheckedOptimizers()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    checked.add(optimizer)
    assert optimizer in checked and len(checked) == 1
    del optimizer
    gc.collect()
    assert len(checked) == 0


def test_checked_optimizers_are_told_apart_by_identity():
    # helper-118: a WeakSet compared optimizers with their own __eq__ / __hash__: one equal by value passed as
    # checked, one with __eq__ and no __hash__ was unhashable
    from masksub_kernels.training.schedules import CheckedOptimizers

    class AllEqual(torch.optim.SGD):
        def __eq__(self, other):
            return True

        def __hash__(self):
            return 0

    class Unhashable(torch.optim.SGD):
        def __eq__(self, other):
            return self is other

    checked = CheckedOptimizers()
    first, second = (AllEqual([torch.nn.Parameter(torch.zeros(1))], lr=0.1) for _ in range(2))
    checked.add(first)
    assert first in checked and second not in checked
    unhashable = Unhashable([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    checked.add(unhashable)
    assert unhashable in checked and len(checked) == 2


def test_a_copied_masksub_checks_the_optimizer_again():
    # a deep copy (e.g. an EMA of the model) kept the original's checked optimizers: the original's optimizer, which
    # holds none of the copy's parameters, stepped nothing on the copy, silently
    ms = _vit_masksub()
    images, target = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 3])
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    ms.train_step(images, target, optimizer, seed=0)
    copied = copy.deepcopy(ms)
    with pytest.raises(ValueError, match="optimizer"):
        copied.train_step(images, target, optimizer, seed=1)


@pytest.mark.parametrize(
    "options",
    [
        dict(main_weight=0.3, sub_weight=0.9, label_smoothing=0.1),
        dict(loss="bce", target_threshold=0.0, main_weight=0.9, sub_weight=0.3, label_smoothing=0.1),
    ],
)
def test_both_schedules_follow_the_weights_and_the_loss_options(options):
    # helper-115: unequal weights, BCE with its threshold and label smoothing went unchecked in the sequential
    # schedule (a swapped weight, a CE sub-term or a dropped threshold / smoothing passed at the published 1/2, CE)
    ms = _vit_masksub(**options)
    images, target = batch("vit", soft=True)
    mode, eps = options.get("loss", "ce"), options["label_smoothing"]
    q = (target > 0).to(target.dtype) if mode == "bce" else target  # DeiT-III binarises, then smooths
    q = (1 - eps) * q + eps / target.shape[1]
    main = ms.model(images)
    sub = reference_vit_sub(ms.model, images, mk.random_keep_indices(4, 16, 8, seed=7))
    _, crit_main, crit_sub = reference_loss(main, sub, q, mode)
    _both_schedules_give(ms, images, target, crit_main, crit_sub, options["main_weight"], options["sub_weight"])


def _both_schedules_give(ms, images, target, crit_main, crit_sub, main_weight=0.5, sub_weight=0.5):
    """Both schedules' gradients and logged terms equal the reference's (crit_*: its terms from ms's own weights,
    seed 7's sub-branch)."""
    (main_weight * crit_main + sub_weight * crit_sub).backward()
    want = grads(ms)
    for schedule in ("sequential", "joint"):
        ms.zero_grad(set_to_none=True)
        out = ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=0.0), seed=7, schedule=schedule)
        assert_grads_close(grads(ms), want, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(out["loss_main"], crit_main.float(), msg=schedule)
        torch.testing.assert_close(out["loss_sub"], crit_sub.float(), msg=schedule)
        weighted = main_weight * crit_main + sub_weight * crit_sub
        torch.testing.assert_close(out["loss"], weighted.float(), msg=schedule)


@pytest.mark.parametrize(("loss", "ignored"), [("ce", [1]), ("bce", [1]), ("ce", [0, 1, 2, 3])])
def test_both_schedules_leave_ignored_rows_out_of_both_terms(loss, ignored):
    # helper-159: a class id of -100 (ignore_index) counted in the sequential schedule's sub term (CE), and its BCE
    # main term refused it, where the joint schedule's masksub_loss leaves the row out of both terms
    ms = _vit_masksub(loss=loss)
    images, target = batch("vit")
    target[ignored] = -100
    kept = torch.tensor([i for i in range(4) if i not in ignored], dtype=torch.long)
    main = ms.model(images)
    sub = reference_vit_sub(ms.model, images, mk.random_keep_indices(4, 16, 8, seed=7))
    q = torch.nn.functional.one_hot(target[kept], main.shape[1]).to(main.dtype)
    if kept.numel():
        _, crit_main, crit_sub = reference_loss(main[kept], sub[kept], q, loss)  # the counted rows only
    else:  # none counted: 0, zero gradients (the mean's divisor is at least 1)
        crit_main = crit_sub = 0.0 * (main.sum() + sub.sum())
    _both_schedules_give(ms, images, target, crit_main, crit_sub)


def test_clipping_covers_the_swin_mask_token():
    # helper-115: the clipped norm is the whole summed gradient's, the wrapper's own mask token included
    torch.manual_seed(0)
    ms = MaskSub(tiny_swin().double()).train()
    images, target = batch("swin")
    ms(images, target, seed=3)["loss"].backward()
    unclipped = grads(ms)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in unclipped.values()]))
    assert norm > 1e-3 and unclipped["mask_token"].abs().sum() > 0
    ms.train_step(images, target, torch.optim.SGD(ms.parameters(), lr=0.0), seed=3, clip_grad=1e-3)
    assert_grads_close(grads(ms), {n: g * (1e-3 / (norm + 1e-6)) for n, g in unclipped.items()}, atol=1e-12)


def test_a_bad_clip_grad_is_refused_on_every_micro_step():
    # helper-115: train_step checks clip_grad before any work; the step's own check alone let a window's first
    # micro-steps run with clip_grad=0 or nan
    ms = _vit_masksub()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    for clip_grad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="clip_grad must be a max norm > 0"):
            ms.train_step(*batch("vit"), optimizer, accum_steps=2, clip_grad=clip_grad)
    assert all(p.grad is None for p in ms.parameters())


def test_plain_step_accumulates_the_mean_over_the_window():
    # helper-115: the baseline's PlainStep (--baseline) divides each micro-batch's loss by A, as train_step does
    from masksub_kernels.training.engine import PlainStep
    from masksub_kernels.training.wrapper import supervised_loss

    torch.manual_seed(0)
    model = tiny_vit().double()
    reference = copy.deepcopy(model)
    step = PlainStep(model, supervised_loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    (x1, y1), (x2, y2) = batch("vit", seed=1), batch("vit", seed=2)
    assert step(x1, y1, optimizer, accum_steps=2)["stepped"] is False
    assert step(x2, y2, optimizer, accum_steps=2)["stepped"] is True
    supervised_loss(reference(torch.cat([x1, x2])), torch.cat([y1, y2])).backward()
    assert_grads_close(grads(model), grads(reference), rtol=1e-6, atol=1e-9)


def test_seed_epoch_gives_each_seed_epoch_and_rank_its_own_stream():
    # helper-115: ranks seeded alike would draw the same augmentations, Mixup and masks on every rank
    import random

    import numpy as np

    from masksub_kernels.training.engine import seed_epoch

    def draws(seed, epoch, rank):
        seed_epoch(seed, epoch, rank)
        return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]  # noqa: NPY002

    keys = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    got = [draws(*key) for key in keys]
    assert draws(0, 0, 1) == got[1]  # reproducible
    for generator in range(3):  # torch, NumPy, Python: a new stream per seed, epoch and rank
        assert len({tuple(d[generator]) for d in got}) == len(keys)


def test_train_one_epoch_updates_once_per_optimizer_step_and_evaluate_restores_the_mode():
    # helper-115: the scheduler's step_update and after_step (the EMA's update) run after optimizer steps only, not
    # after every micro-step; evaluate counts top-5 hits apart from top-1 and leaves the model's mode as it was
    from masksub_kernels.training.engine import PlainStep, evaluate, train_one_epoch
    from masksub_kernels.training.wrapper import supervised_loss

    torch.manual_seed(0)
    model = tiny_vit().double()
    loader = [batch("vit", seed=i) for i in range(4)]
    updates, after = [], []
    scheduler = types.SimpleNamespace(step_update=lambda num_updates: updates.append(num_updates))
    stats = train_one_epoch(
        PlainStep(model, supervised_loss), loader, torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"), scheduler=scheduler, num_updates=5, accum_steps=2,
        after_step=lambda: after.append(1),
    )  # fmt: skip
    assert updates == [6, 7] and len(after) == 2 and stats.num_updates == 7 and stats.loss_sub is None

    class Fixed(torch.nn.Module):  # its images are its logits
        def forward(self, images):
            return images

    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 0], [0.0, 9, 8, 7, 6, 5, 4], [0.0, 9, 8, 7, 6, 5, 4]])
    target = torch.tensor([0, 5, 6])  # a top-1 hit, a top-5 hit (5th), a miss (6th)
    fixed = Fixed().train()
    metrics = evaluate(fixed, [(logits, target)], device=torch.device("cpu"))
    assert metrics["top1"] == pytest.approx(100 / 3) and metrics["top5"] == pytest.approx(200 / 3)
    assert metrics["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item())
    assert fixed.training


# helper-171's mutation audit: clip_grad's type, partial optimizers, collected optimizers, one rank, autocast
def test_a_bool_clip_grad_is_refused():  # schedules.py:78 isinstance(clip_grad, bool)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    with pytest.raises(TypeError, match="clip_grad must be a number"):
        optimizer_step(optimizer, None, True)


def test_an_optimizer_holding_part_of_the_model_is_accepted():  # schedules.py:88 any(...), not all(...)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    check_optimizer_params(model, torch.optim.SGD(model[1].parameters(), lr=0.1))  # a head-only optimizer


def test_a_partly_frozen_model_trains():  # schedules.py:99 any(p.requires_grad ...), not all(...)
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit().double()).train()
    for p in ms.model.parameters():
        p.requires_grad_(False)
    for p in ms.model.get_classifier().parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)  # holds frozen parameters too
    out = ms.train_step(*batch("vit"), optimizer)
    assert out["stepped"]


def test_a_new_optimizer_at_a_collected_ones_address_is_not_checked(monkeypatch):  # schedules.py:124 ref() is opt
    import gc

    from masksub_kernels.training import schedules

    monkeypatch.setattr(schedules, "id", lambda obj: 1, raising=False)  # every object at one address: reuse forced
    checked = schedules.CheckedOptimizers()
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    checked.add(optimizer)
    del optimizer
    gc.collect()
    assert torch.optim.SGD([param], lr=0.1) not in checked


def test_collected_optimizers_do_not_pile_up():  # schedules.py:131 the collected forgotten on add
    import gc

    from masksub_kernels.training.schedules import CheckedOptimizers

    checked = CheckedOptimizers()
    param = torch.nn.Parameter(torch.zeros(1))
    batch_ = [torch.optim.SGD([param], lr=0.1) for _ in range(20)]
    for optimizer in batch_:
        checked.add(optimizer)
    del batch_, optimizer
    gc.collect()
    checked.add(torch.optim.SGD([param], lr=0.1))
    assert len(checked._refs) == 1


def test_a_one_rank_process_group_needs_no_wrap_ddp(monkeypatch):  # schedules.py:237 world_size > 1
    import torch.distributed as dist

    torch.manual_seed(0)
    ms = MaskSub(tiny_vit().double()).train()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    assert ms.train_step(*batch("vit"), optimizer)["stepped"]


def test_only_the_swin_mask_token_trains():  # schedules.py:264 if loss_main.requires_grad
    from _models import tiny_swin

    torch.manual_seed(0)
    ms = MaskSub(tiny_swin().double()).train()
    for p in ms.model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([ms.mask_token], lr=0.1)
    before = ms.mask_token.detach().clone()
    assert ms.train_step(*batch("swin"), optimizer, seed=1)["stepped"]
    assert not torch.equal(ms.mask_token, before)


def test_an_autocast_instance_is_refused_before_any_work():  # schedules.py:220 AbstractContextManager
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit().double()).train()
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="autocast must be a context-manager factory"):
        ms.train_step(*batch("vit"), optimizer, autocast=torch.autocast("cpu"))
    assert all(p.grad is None for p in ms.parameters())


# helper-206's second-pass mutation audit of wrapper.py, engine.py and schedules.py' train step
# kills schedules.py:257 `backward(out['loss'] / accum_steps)` -> `backward(out['loss'])`: the joint schedule's
# accumulated gradient must be the window's mean, as the sequential one's (test_accumulating_two_steps_... runs only
# the sequential schedule)
def test_joint_accumulation_gives_the_mean_of_the_micro_steps_gradients():
    torch.manual_seed(0)
    ms = MaskSub(tiny_vit().double()).train()
    (x1, y1), (x2, y2) = batch("vit", seed=1), batch("vit", seed=2)
    (ms(x1, y1, seed=11)["loss"] + ms(x2, y2, seed=12)["loss"]).div(2).backward()
    want = grads(ms)
    optimizer = torch.optim.SGD(ms.parameters(), lr=0.0)
    assert not ms.train_step(x1, y1, optimizer, accum_steps=2, seed=11, schedule="joint")["stepped"]
    assert ms.train_step(x2, y2, optimizer, accum_steps=2, seed=12, schedule="joint")["stepped"]
    assert_grads_close(grads(ms), want, rtol=1e-7, atol=1e-10)


# helper-225 (the optimisation recipe's mutation audit): clipping over every group, each optimizer checked


# kills schedules.py:62 `params = [... for group in optimizer.param_groups ...]` -> the first group's only: with
# --layer-decay (or timm's decay / no-decay split) the optimizer has many groups, and --clip-grad must bound the norm
# of the whole gradient, as torch's clip_grad_norm_(model.parameters()) in timm's / MAE's train loops does; the
# existing clipping tests build single-group optimizers
def test_clipping_bounds_the_gradient_of_every_parameter_group():
    from masksub_kernels.training.schedules import optimizer_step

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)  # norm sqrt(27 + 64)
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], lr=1.0)
    optimizer_step(optimizer, clip_grad=1.0)
    total = torch.cat([a.grad, b.grad]).norm()
    assert total == pytest.approx(1.0, rel=1e-5)  # the joint norm clipped to 1, not group 0's alone
    assert torch.allclose(a.grad / b.grad[:3], torch.tensor(0.75))  # one factor for both groups


# kills schedules.py:105 `if optimizer in ms._checked_optimizers: return` -> `if len(ms._checked_optimizers):`: the
# checks are per optimizer; a second optimizer (built from another model) on a wrapper that has stepped once must be
# refused, not skipped because some earlier one was checked
def test_a_second_optimizer_of_another_model_is_checked_too():
    from masksub_kernels.training.schedules import train_step

    ms = MaskSub(tiny_vit().double()).train()
    images, target = batch("vit", size=2)
    first = torch.optim.SGD(ms.parameters(), lr=0.1)  # kept alive: the checked set holds it weakly
    train_step(ms, images, target, first, seed=1)
    other = torch.optim.SGD(tiny_vit().double().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of this MaskSub's parameters"):
        train_step(ms, images, target, other, seed=1)


def test_the_method_and_the_function_take_the_same_arguments():
    # MaskSub.train_step repeats schedules.train_step's signature to forward it: kept in step by hand (helper-281)
    import inspect

    from masksub_kernels.training.schedules import train_step

    method = list(inspect.signature(MaskSub.train_step).parameters.values())
    function = list(inspect.signature(train_step).parameters.values())
    assert method[1:] == function[1:]  # (self / ms first)
    assert inspect.signature(MaskSub.train_step).return_annotation == inspect.signature(train_step).return_annotation

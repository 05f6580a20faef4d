"""The loss's forward and backward of a row in one launch (ops/_loss_fwd_bwd.py), the fused-linear chunks' path.

The fused kernel calls the two kernels' code, so it must give their values bit for bit where it runs the forward in
the forward's own num_warps (here: MAX_BLOCK_C = 64, 4 warps each; at C > 2048 a GPU's fused forward runs in the
backward's 16 warps and its sums differ in the last bits, helper-165): every option (CE / BCE,
class ids with ignored and out-of-range rows / probabilities, label smoothing, temperatures, a threshold, a bias or
none, one term or two, either gradient alone), fp32 / fp16 / bf16 logits, gradients of their own or written over
the fp32 logits' rows (the chunks' bf16), extreme values, several blocks per row. It runs in one launch where no
class split is configured, in masksub_loss's two where one is (few rows: class_splits).
"""

import functools
import inspect

import pytest
import torch
from conftest import DEVICE, kernel_backends
from test_masksub_loss import make_inputs

from masksub_kernels.ops import _loss_fwd_bwd as fused
from masksub_kernels.ops import _loss_layout as loss_layout
from masksub_kernels.ops import masksub_loss as ml

pytestmark = [
    pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning"),
    pytest.mark.triton,
]

ROWS, CLASSES = 6, 200


@pytest.fixture(autouse=True)
def _triton_only():
    if "triton" not in kernel_backends():
        pytest.skip("needs the Triton backend")


@pytest.fixture
def launches(monkeypatch):
    """The launches made: 'fused', or 'forward' and 'backward' (masksub_loss's two launchers)."""
    made = []
    for name, label in (("_forward_triton", "forward"), ("_backward_triton", "backward")):
        launcher = getattr(ml, name)
        monkeypatch.setattr(ml, name, lambda *a, _f=launcher, _l=label, **k: made.append(_l) or _f(*a, **k))
    kernel = fused._loss_fwd_bwd_kernel

    class Recorded:
        def __getitem__(self, grid):
            made.append("fused")
            return kernel[grid]

    monkeypatch.setattr(fused, "_loss_fwd_bwd_kernel", Recorded())
    return made


def _buffers(dtype, over_rows, has_sub, seed, extreme):
    """(z, s, (dz, ds)): the logits and the gradients' buffers. over_rows: the chunks' layout (fp32 logits in a
    buffer of padded rows, bf16 gradients over their rows); else logits of ``dtype`` and gradients of their own.
    extreme: logits of 1e4 and -1e4, -inf ones (column 10 of row 3: no target mass there, _run), a row far below 0."""
    main, sub, _ = make_inputs(ROWS, CLASSES, torch.float32, "index", seed=seed)
    if extreme:
        main[:, 0], sub[:, 150] = 1e4, -1e4
        main[3, 10] = sub[3, 10] = float("-inf")
        main[4], sub[4] = main[4] - 1e4, sub[4] - 1e4
    if over_rows:
        buffer = torch.full((2 * ROWS, CLASSES + 8), float("nan"), device=DEVICE)
        buffer[:ROWS, :CLASSES], buffer[ROWS:, :CLASSES] = main, sub
        z, s = buffer[:ROWS, :CLASSES], buffer[ROWS:, :CLASSES]
        narrow = buffer.view(torch.bfloat16)
        into = (narrow[:ROWS, :CLASSES], narrow[ROWS:, :CLASSES])
    else:
        z, s = main.to(dtype), sub.to(dtype)
        into = tuple(torch.full_like(z, float("nan")) for _ in range(2))
    return z, s if has_sub else None, into


def _run(one_launch, args, kind, options, bias, grads, over_rows, seed, extreme):
    """(stats, dz, ds) of one path on fresh buffers (the over-rows gradients overwrite the logits)."""
    dtype, has_sub = args
    z, s, into = _buffers(dtype, over_rows, has_sub, seed, extreme)
    target = make_inputs(ROWS, CLASSES, torch.float32, kind, seed=seed + 1)[2]
    if kind == "dense":
        target[3, 10] = 0.0  # no target mass on the -inf logit (extreme)
    else:
        target[1] = CLASSES + 3  # an out-of-range id: NaN in the row's values and gradients
        target[3] = 11
    stats = torch.full((ml.NUM_OUT, 2 * ROWS), float("nan"), device=DEVICE)[:, ROWS:]  # a view into a wider [9, N]
    tickets = torch.zeros(ROWS, dtype=torch.int32, device=DEVICE)
    gm, gs = grads
    gs = gs if has_sub else None
    if one_launch:
        out, (dz, ds) = fused.forward_backward_triton(
            gm, gs, z, s, target, *options, out=stats, tickets=tickets, into=into, bias=bias, over_rows=over_rows
        )
    else:
        out = ml._forward_triton(z, s, target, *options, bias=bias, out=stats, tickets=tickets)
        dz, ds = ml._backward_triton(gm, gs, out, z, s, target, *options, into=into, bias=bias, over_rows=over_rows)
    assert out is stats and not tickets.any()
    return [t.detach().cpu().float().clone() for t in (out, dz, ds)]


CASES = [  # logits dtype, kind, mode, eps, temperature, threshold, bias, sub-branch, grads (main, sub), over rows
    (torch.float32, "index_ignore", "ce", 0.0, 1.0, None, True, True, (True, True), True),  # BERT's chunks
    (torch.float32, "index", "ce", 0.1, 2.0, None, False, True, (True, True), True),
    (torch.float32, "dense", "ce", 0.1, 1.0, None, False, True, (True, True), True),  # mixup's
    (torch.float32, "dense", "bce", 0.0, 2.0, 0.5, True, True, (True, True), True),  # DeiT-III's
    (torch.float32, "index_ignore", "bce", 0.1, 1.0, None, True, True, (True, True), True),
    (torch.float32, "index", "ce", 0.0, 1.0, None, True, False, (True, False), True),  # one branch
    (torch.float32, "index", "ce", 0.0, 0.5, None, True, True, (False, True), True),  # the sub term alone
    (torch.float32, "dense", "ce", 0.0, 2.0, None, True, True, (True, False), False),
    (torch.bfloat16, "index_ignore", "ce", 0.1, 2.0, None, True, True, (True, True), False),
    (torch.float16, "dense", "bce", 0.1, 1.0, None, False, True, (True, True), False),
]


@pytest.mark.parametrize(("dtype", "kind", "mode", "eps", "temperature", "threshold", "bias", "sub", "grads",
                          "over_rows"), CASES)  # fmt: skip
@pytest.mark.parametrize("extreme", [False, True])
def test_one_launch_equals_the_two(launches, dtype, kind, mode, eps, temperature, threshold, bias, sub, grads,
                                   over_rows, extreme, monkeypatch):  # fmt: skip
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)  # several blocks per row and a partial last one (200 classes)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)  # no class split of the 6 rows: one program each
    monkeypatch.setattr(fused, "FORWARD_DESCENDING", False)  # the two launches' order: bit for bit (descending below)
    options = (mode == "bce", eps, -100, temperature, threshold)
    gen = torch.Generator().manual_seed(3)
    row_grads = tuple(torch.randn(ROWS, generator=gen).to(DEVICE) if want else None for want in grads)
    b = (torch.randn(CLASSES, generator=gen) * 2).to(DEVICE, torch.bfloat16) if bias else None
    args, seed = (dtype, sub), 11 if extreme else 5
    one = _run(True, args, kind, options, b, row_grads, over_rows, seed, extreme)
    assert launches == ["fused"]
    launches.clear()
    two = _run(False, args, kind, options, b, row_grads, over_rows, seed, extreme)
    assert launches == ["forward", "backward"]
    for name, got, want in zip(("stats", "dz", "ds"), one, two):
        assert torch.equal(got.nan_to_num(7.0, 8.0, -8.0), want.nan_to_num(7.0, 8.0, -8.0)), name
        assert torch.equal(got.isnan(), want.isnan()), name
    assert one[0].isnan().any(dim=0).tolist()[1] == (kind != "dense")  # the out-of-range id's row
    if eps == 0:  # every other row finite, extreme values included (smoothing puts mass on the -inf logit)
        assert one[0][:, [0, 2, 3, 4, 5]].isfinite().all()
    # the default order, the row's whole blocks from the last down (FORWARD_DESCENDING): the states added in another
    # order, the same values to fp32 rounding (a gradient of 16 bits: to its own rounding)
    monkeypatch.setattr(fused, "FORWARD_DESCENDING", True)
    launches.clear()
    descending = _run(True, args, kind, options, b, row_grads, over_rows, seed, extreme)
    assert launches == ["fused"]
    low = over_rows or dtype != torch.float32
    for name, got, want in zip(("stats", "dz", "ds"), descending, two):
        rtol = 2**-7 if low and name != "stats" else 1e-5
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-6, equal_nan=True, msg=name)


@pytest.mark.parametrize("over_rows", [False, True])
def test_a_class_split_takes_the_two_launches(launches, monkeypatch, over_rows):
    # few rows on many SMs: the forward splits each row's classes over programs (merged through tickets), so the
    # fused launch, one program per row, does not apply; the two launches run, with the same values
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 132)
    forward_config = ml._forward_config(*_buffers(torch.float32, over_rows, True, 5, False)[:2], None, False, False,
                                        False, True, True, 132)  # fmt: skip
    assert forward_config[0][0] > 1  # split
    options, grads = (False, 0.0, -100, 1.0, None), (torch.ones(ROWS, device=DEVICE),) * 2
    got = _run(True, (torch.float32, True), "index", options, None, grads, over_rows, 5, False)
    assert launches == ["forward", "backward"]
    want = _run(False, (torch.float32, True), "index", options, None, grads, over_rows, 5, False)
    assert all(torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) for a, b in zip(got, want))


def test_fused_constants():
    # the fused launch's constants: the shared ones once, the rest of each kernel's under F_ / B_, the larger
    # num_warps; None where either configuration splits; an AssertionError where the shared ones disagree
    shared = {"BCE": False, "DENSE": True, "BINARISE": False, "HAS_BIAS": True, "SPLIT": False}
    per_kernel = {"BLOCK_C": 1024, "UNIT_T": True, "VEC": 1, "GROUP": 4, "ALIGNED": True, "EVEN": False}
    forward = {**shared, **per_kernel, "HAS_MAIN": True, "HAS_SUB": True, "SMOOTHED": False, "num_warps": 4}
    forward["BLOCK_S"] = 1
    backward = {**shared, **per_kernel, "BLOCK_C": 2048, "UNIT_T": False, "num_warps": 8}
    backward |= {"LABELS": False, "WRITE_DZ": True, "WRITE_DS": False, "OVER_ROWS": True, "D_GROUP": 8}
    merged = fused.fused_constexprs(forward, backward)
    assert merged["F_BLOCK_C"] == 1024 and merged["B_BLOCK_C"] == 2048 and merged["num_warps"] == 8
    assert merged["F_UNIT_T"] and not merged["B_UNIT_T"] and merged["OVER_ROWS"] and not merged["SMOOTHED"]
    kernel_constants = [
        name for name, p in inspect.signature(fused._loss_fwd_bwd_kernel.fn).parameters.items()
        if "constexpr" in str(p.annotation)
    ]  # fmt: skip
    tail = ["TAIL", "TAIL_DZ", "TAIL_DS", "TAIL_DW", "BLOCK_T", "BLOCK_D"]  # the class tail's (ClassTail)
    own = [*tail, "DESCENDING"]  # and the forward's order, the one launch's own (one_launch: FORWARD_DESCENDING)
    assert sorted(kernel_constants) == sorted([*own, *(k for k in merged if k != "num_warps")])  # no other
    # the forward's block in more warps than its own: widened to a 16-byte word per thread (BCE's 1024 classes in
    # the backward's 16 warps: 2048 of fp32 logits, 4096 of bf16), at most the backward's block; not where the
    # words are single elements' (GROUP 1: unaligned rows) or the warps the forward's own
    wide = {**backward, "BLOCK_C": 4096, "num_warps": 16}
    assert fused.fused_constexprs(forward, wide)["F_BLOCK_C"] == 2048
    assert fused.fused_constexprs({**forward, "GROUP": 8}, wide)["F_BLOCK_C"] == 4096
    assert fused.fused_constexprs({**forward, "GROUP": 8}, {**wide, "BLOCK_C": 2048})["F_BLOCK_C"] == 2048
    assert fused.fused_constexprs({**forward, "GROUP": 1}, wide)["F_BLOCK_C"] == 1024
    assert fused.fused_constexprs({**forward, "num_warps": 16}, wide)["F_BLOCK_C"] == 1024
    assert fused.fused_constexprs({**forward, "GROUP": 8, "num_warps": 8}, backward)["F_BLOCK_C"] == 1024
    assert fused.fused_constexprs({**forward, "SPLIT": True}, backward) is None
    assert fused.fused_constexprs(forward, {**backward, "SPLIT": True}) is None
    with pytest.raises(AssertionError, match="disagree"):
        fused.fused_constexprs(forward, {**backward, "DENSE": False})


@pytest.mark.parametrize("over_rows", [False, True])
def test_the_forward_block_widened_to_the_backward_warps(launches, monkeypatch, over_rows):
    # BCE at C = 3000 (the launchers' real blocks): the forward's 1024 classes in 4 warps, the backward's 4096 in 16;
    # the one launch runs the forward's block widened to 2048 (a 16-byte word of fp32 logits per thread of its 16
    # warps): the same values as the two launches to fp32 rounding (its sums' blocks differ), gradients to one
    # rounding of their dtype
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    rows, classes = 4, 3000
    options = (True, 0.0, -100, 2.0, None)
    main, sub, target = make_inputs(rows, classes, torch.float32, "index", seed=21)
    gen = torch.Generator().manual_seed(22)
    row_grads = tuple(torch.randn(rows, generator=gen).to(DEVICE) for _ in range(2))
    z, s, y = loss_layout._unit_last_stride(main, sub, target)
    if over_rows:  # the chunks' layout: bf16 gradients over the fp32 logits' rows
        buffer = torch.cat([main, sub])
        z, s = buffer[:rows], buffer[rows:]
        into = tuple(buffer.view(torch.bfloat16)[:, :classes].split(rows))
    else:
        into = tuple(torch.empty_like(main) for _ in range(2))
    constexprs = fused.one_launch(*row_grads, z, s, y, *options[:1], 0.0, 2.0, None, into, None, over_rows)[2]
    assert constexprs["F_BLOCK_C"] == 2048 and constexprs["B_BLOCK_C"] == 4096 and constexprs["num_warps"] == 16
    results = []
    for one_launch in (True, False):
        monkeypatch.setattr(fused, "ONE_LAUNCH", one_launch)
        main_copy, sub_copy = main.clone(), sub.clone()
        if over_rows:
            buffer = torch.cat([main_copy, sub_copy])
            z, s = buffer[:rows], buffer[rows:]
            into = tuple(buffer.view(torch.bfloat16)[:, :classes].split(rows))
        else:
            z, s = main_copy, sub_copy
            into = tuple(torch.empty_like(main) for _ in range(2))
        stats = torch.empty(ml.NUM_OUT, rows, device=DEVICE)
        tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
        out, grads = fused.forward_backward_triton(
            *row_grads, z, s, target, *options, out=stats, tickets=tickets, into=into, over_rows=over_rows
        )
        results.append([t.float().cpu().clone() for t in (out, *grads)])
    assert launches == ["fused", "forward", "backward"]
    (stats, dz, ds), (stats2, dz2, ds2) = results
    torch.testing.assert_close(stats, stats2, rtol=2e-6, atol=1e-6)
    bf16 = over_rows  # one rounding of the gradients' dtype apart at most
    tol = {"rtol": 2**-7, "atol": 1e-6} if bf16 else {"rtol": 2e-6, "atol": 1e-9}
    torch.testing.assert_close(dz, dz2, **tol)
    torch.testing.assert_close(ds, ds2, **tol)


TAIL_CASES = [  # inputs' dtype, kind, mode, temperature, sub-branch, grads (main, sub)
    (torch.bfloat16, "index_ignore", "ce", 1.0, True, (True, True)),  # BERT's chunks
    (torch.float32, "dense", "bce", 2.0, True, (True, True)),
    (torch.bfloat16, "index", "ce", 2.0, False, (True, False)),  # one branch
    (torch.float16, "index", "ce", 1.0, True, (False, True)),  # the sub term alone
]


@pytest.mark.parametrize(("dtype", "kind", "mode", "temperature", "sub", "grads"), TAIL_CASES)
def test_the_class_tail_in_the_one_launch(launches, monkeypatch, dtype, kind, mode, temperature, sub, grads):
    # C = 203: the matmul writes the logits of the aligned head (200 classes); the one launch computes the last 3
    # from the rows and W's tail rows, and dH's share of them (dz's tail columns times those rows, fp32) into the
    # products: the same stats, gradients and products as the tail's logits and products by matmuls (fp32, summed
    # in another order: to fp32's rounding, the gradients to one rounding of their dtype)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    rows, depth, classes, head = ROWS, 40, 203, 200
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(2 * rows, depth, generator=gen)).to(DEVICE, dtype)
    w = (torch.randn(classes, depth, generator=gen) / 4).to(DEVICE, dtype)
    target = make_inputs(rows, classes, torch.float32, kind, seed=8)[2]
    row_grads = tuple(torch.randn(rows, generator=gen).to(DEVICE) if want else None for want in grads)
    options = (mode == "bce", 0.1, -100, temperature, None)
    low = dtype != torch.float32  # the chunks' layout: gradients in the inputs' dtype over the fp32 logits' rows
    results = []
    for in_launch in (False, True):
        buffer = torch.full((2 * rows, 208), float("nan"), device=DEVICE)
        buffer[:, : head if in_launch else classes] = (x.float() @ w.float().T)[:, : head if in_launch else classes]
        z, s = buffer[:rows, :classes], buffer[rows:, :classes] if sub else None
        grads = buffer.view(dtype)[:, :classes] if low else buffer[:, :classes]
        into = (grads[:rows], grads[rows:])
        stats = torch.full((ml.NUM_OUT, rows), float("nan"), device=DEVICE)
        tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
        products = tuple(torch.full((rows, depth), float("nan"), device=DEVICE) if g is not None else None
                         for g in row_grads)  # fmt: skip
        # the gradients' tail columns kept for dW's tail, at rows 3.. of a longer buffer (the chunk's place)
        kept = tuple(torch.zeros(rows + 5, 8, dtype=grads.dtype, device=DEVICE) if g is not None else None
                     for g in row_grads)  # fmt: skip
        tail = fused.ClassTail(head, w[head:], x[:rows], x[rows:] if sub else None, products, kept, 3)
        tail = tail if in_launch else None
        out, (dz, ds) = fused.forward_backward_triton(
            *row_grads, z, s, target, *options, out=stats, tickets=tickets, into=into, over_rows=low, tail=tail
        )
        if not in_launch:  # the tail's share of dH by a matmul
            products = tuple(None if d.numel() == 0 else d[:, head:].float() @ w[head:].float() for d in (dz, ds))
        else:  # the kept tail columns: each row's, as stored, at rows 3 .. 3 + R; zeros elsewhere
            width = classes - head
            for k, d in zip(kept, (dz, ds)):
                if k is not None:
                    assert torch.equal(k[3 : 3 + rows, :width], d[:, head:]) and not k[:, width:].any()
                    assert not k[:3].any() and not k[3 + rows :].any()
        results.append([out.clone(), dz.float().clone(), ds.float().clone(), *products])
    assert launches == ["fused", "fused"]
    for name, got, want in zip(("stats", "dz", "ds", "product", "sub product"), results[1], results[0]):
        if want is None:
            assert got is None, name
        elif name in ("dz", "ds"):
            torch.testing.assert_close(got, want, rtol=2**-7 if low else 1e-5, atol=1e-6, equal_nan=True)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_class_tail_over_several_depth_blocks(monkeypatch, dtype):
    # D = 300: the tail's loops over the depth (BLOCK_D = 128) take 3 blocks, the last one partial (BERT's 768: 6)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    rows, depth, classes, head = 6, 300, 203, 200
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2 * rows, depth, generator=gen).to(DEVICE, dtype)
    w = (torch.randn(classes, depth, generator=gen) / 16).to(DEVICE, dtype)
    target = make_inputs(rows, classes, torch.float32, "index", seed=8)[2]
    row_grads = tuple(torch.randn(rows, generator=gen).to(DEVICE) for _ in range(2))
    low = dtype != torch.float32
    results = []
    for in_launch in (False, True):
        buffer = torch.full((2 * rows, 208), float("nan"), device=DEVICE)
        columns = head if in_launch else classes
        buffer[:, :columns] = (x.float() @ w.float().T)[:, :columns]
        z, s = buffer[:rows, :classes], buffer[rows:, :classes]
        grads = buffer.view(dtype)[:, :classes] if low else buffer[:, :classes]
        stats = torch.full((ml.NUM_OUT, rows), float("nan"), device=DEVICE)
        tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
        products = tuple(torch.full((rows, depth), float("nan"), device=DEVICE) for _ in range(2))
        tail = fused.ClassTail(head, w[head:], x[:rows], x[rows:], products) if in_launch else None
        out, (dz, ds) = fused.forward_backward_triton(
            *row_grads, z, s, target, False, 0.0, -100, 1.0, None, out=stats, tickets=tickets,
            into=(grads[:rows], grads[rows:]), over_rows=low, tail=tail,
        )  # fmt: skip
        if not in_launch:
            products = tuple(d[:, head:].float() @ w[head:].float() for d in (dz, ds))
        results.append([out.clone(), *products])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_a_prepared_tail_takes_a_row_base_within_its_kept_rows():
    # the chunk loop prepares a class tail once per chunk size and hands each chunk its row_base: a row_base whose
    # rows run past the kept tail columns' buffer is refused (helper-130's surviving mutant), and so is a kept buffer
    # for a gradient not written (one flag writes both: the stand-in pointer would be written)
    rows, depth, classes, head = 4, 16, 27, 24
    x, w = torch.randn(2 * rows, depth, device=DEVICE), torch.randn(classes, depth, device=DEVICE)
    buffer = torch.zeros(2 * rows, 32, device=DEVICE)  # on the GPU's device there: compiled Triton (helper-147)
    z, s = buffer[:rows, :classes], buffer[rows:, :classes]
    g = (torch.ones(rows, device=DEVICE), torch.ones(rows, device=DEVICE))
    kept = (torch.zeros(rows + 2, 8, device=DEVICE), torch.zeros(rows + 2, 8, device=DEVICE))
    prepared = fused.prepare_tail(fused.ClassTail(head, w[head:], x[:rows], x[rows:], (None, None), kept), z, s, *g,
                                  (z, s), torch.zeros(1, device=DEVICE))  # fmt: skip
    for row_base, fits in ((2, True), (3, False)):
        call = functools.partial(
            fused.forward_backward_triton, *g, z, s, torch.zeros(rows, dtype=torch.int64, device=DEVICE), False, 0.0,
            -100, 1.0, None, out=torch.zeros(ml.NUM_OUT, rows, device=DEVICE),
            tickets=torch.zeros(rows, dtype=torch.int32, device=DEVICE), into=(z, s),
            tail=prepared._replace(row_base=row_base),
        )  # fmt: skip
        if fits:
            call()
        else:
            with pytest.raises(AssertionError):
                call()
    one_kept = fused.ClassTail(head, w[head:], x[:rows], x[rows:], (None, None), (None, kept[1]))
    with pytest.raises(AssertionError):
        fused.prepare_tail(one_kept, z, s, *g, (z, s), torch.zeros(1, device=DEVICE))


# helper-168's mutation audit: unpadded logit rows, a one-column depth block, a negative threshold, the tail's bounds
@pytest.mark.parametrize(("rows", "depth", "width"), [(6, 40, 203), (4, 129, 208)])
def test_the_class_tail_at_its_edges(monkeypatch, rows, depth, width):
    # logit rows of C = 203 with no padding (width 203): the tail's logits are stored at classes < C only, a store
    # at column C would land on the next row's class 0 before that row's program reads it (F1; W a view of a longer
    # tensor, so that a read of its row C stays in bounds); D = 129 = BLOCK_D + 1: the depth loop's last block
    # holds a single column (F3). The one launch's stats, logits, gradients and dH's products as the matmuls'
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    classes, head = 203, 200
    gen = torch.Generator().manual_seed(depth)
    x = torch.randn(2 * rows, depth, generator=gen).to(DEVICE)
    w = (torch.randn(classes + 1, depth, generator=gen) / 8).to(DEVICE)[:classes]
    target = make_inputs(rows, classes, torch.float32, "index", seed=8)[2]
    row_grads = tuple(torch.randn(rows, generator=gen).to(DEVICE) for _ in range(2))
    results = []
    for in_launch in (False, True):
        buffer = torch.full((2 * rows, width), float("nan"), device=DEVICE)
        columns = head if in_launch else classes
        buffer[:, :columns] = (x @ w.T)[:, :columns]
        z, s = buffer[:rows, :classes], buffer[rows:, :classes]
        stats = torch.full((ml.NUM_OUT, rows), float("nan"), device=DEVICE)
        tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
        products = tuple(torch.full((rows, depth), float("nan"), device=DEVICE) for _ in range(2))
        tail = fused.ClassTail(head, w[head:], x[:rows], x[rows:], products) if in_launch else None
        out, (dz, ds) = fused.forward_backward_triton(
            *row_grads, z, s, target, False, 0.0, -100, 1.0, None, out=stats, tickets=tickets,
            into=(z, s), tail=tail,
        )  # fmt: skip
        if not in_launch:
            products = tuple(d[:, head:] @ w[head:] for d in (dz, ds))
        results.append([out.clone(), buffer[:, :classes].clone(), *products])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["ce", "bce"])
def test_one_launch_with_a_negative_threshold_and_no_smoothing(monkeypatch, mode):
    # F9 (_loss_fwd_bwd.py:260): a threshold below 0 binarises every class to 1 (SMOOTHED on, as masksub_loss's
    # launcher sets it) even where eps = 0: the one launch must equal the two
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: 1)
    options = (mode == "bce", 0.0, -100, 1.0, -0.5)
    gen = torch.Generator().manual_seed(3)
    row_grads = tuple(torch.randn(ROWS, generator=gen).to(DEVICE) for _ in range(2))
    one = _run(True, (torch.float32, True), "index", options, None, row_grads, True, 5, False)
    two = _run(False, (torch.float32, True), "index", options, None, row_grads, True, 5, False)
    for name, got, want in zip(("stats", "dz", "ds"), one, two):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, equal_nan=True, msg=name)


def _tail_operands(rows=4, depth=16, classes=24):
    x, w = torch.randn(2 * rows, depth, device=DEVICE), torch.randn(classes, depth, device=DEVICE)
    buffer = torch.zeros(2 * rows, 32, device=DEVICE)
    z, s = buffer[:rows, :classes], buffer[rows:, :classes]
    g = (torch.ones(rows, device=DEVICE), torch.ones(rows, device=DEVICE))
    return x, w, z, s, g


def test_a_tail_of_eight_classes_is_taken():
    # F12 (_loss_fwd_bwd.py:325): "at most 8 classes": a tail of exactly 8 (BLOCK_T) is accepted
    x, w, z, s, g = _tail_operands()
    fused.prepare_tail(fused.ClassTail(16, w[16:], x[:4], x[4:], (None, None)), z, s, *g, (z, s),
                       torch.zeros(1, device=DEVICE))  # fmt: skip


def test_kept_rows_are_the_shorter_buffers():
    # F13 (_loss_fwd_bwd.py:339): kept tail buffers of different lengths: the row_base must fit the shorter one
    x, w, z, s, g = _tail_operands(classes=27)
    kept = (torch.zeros(6, 8, device=DEVICE), torch.zeros(9, 8, device=DEVICE))
    prepared = fused.prepare_tail(fused.ClassTail(24, w[24:], x[:4], x[4:], (None, None), kept), z, s, *g, (z, s),
                                  torch.zeros(1, device=DEVICE))  # fmt: skip
    assert prepared.kept_rows == 6


def test_class_tail_weight_rows_past_two_to_the_31_elements():
    # helper-348: _tail_logits' and _tail_products' `w_ptr + t[:, None] * stride_w` were int32: the chunk path's
    # class tail (the C % 8 classes past the 8-aligned head: _linear_loss_chunks' _chunk_tail; the eager backward,
    # probabilities) read W[head + t] there, which the tile kernels' WIDE_W does not cover. C = 15: tail rows t = 0..6,
    # W's rows ceil(2^31 / 6) elements apart: 6 x that = 2^31 + 4 wrapped to -2147483644, and row 6 was read from
    # row 2's bytes (allocated: wrong values, no fault; dH, dHs, dW off by up to 0.6-1.8). Now the same bits as a
    # contiguous W (the interpreter's overflow check, tests/conftest.py, asserted there too)
    import masksub_kernels as mk

    depth, classes, step = 16, 15, -(-(2**31) // 6)
    try:
        storage = torch.empty((classes - 1) * step + depth, dtype=torch.bfloat16, device=DEVICE)  # 10 GiB, untouched
    except (RuntimeError, MemoryError):
        pytest.skip("no 10 GiB of address space for the storage")
    w = storage.as_strided((classes, depth), (step, 1))
    gen = torch.Generator().manual_seed(0)
    w.copy_(torch.randn(classes, depth, generator=gen).to(torch.bfloat16))
    h, hs = (torch.randn(8, depth, generator=gen).to(torch.bfloat16).to(DEVICE) for _ in range(2))
    target = torch.softmax(torch.randn(8, classes, generator=gen), 1).to(DEVICE)

    def run(weight):
        inputs = [t.detach().clone().requires_grad_(True) for t in (h, hs)]
        leaf = weight.detach().requires_grad_(True)
        out = mk.linear_masksub_loss(inputs[0], inputs[1], leaf, None, target, reduction="none")
        (out.loss * torch.linspace(0.5, 1.5, 8, device=DEVICE)).sum().backward()
        return [out.loss, inputs[0].grad, inputs[1].grad, leaf.grad]

    with mk.use_backend("triton"):
        for got, expected in zip(run(w), run(w.contiguous())):
            assert torch.equal(got, expected)

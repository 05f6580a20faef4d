"""The recompute kernels' online states across several tiles of one program (ops/_linear_loss_kernels.py).

With the tests' small tiles and the interpreter's few programs, the shared inputs run one class tile per program:
no program ever rescales its running softmax states. Here one split per row tile makes each program walk every class
tile (forward, dH) and each dW program every row tile, with a bias ramp that moves each row's maximum into a later
tile; at T = 1 (the teacher shares the main term's softmax, UNIT_T) and T = 2 (its own)."""

import pytest
import torch
import triton
import triton.language as tl
from conftest import DEVICE
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures op_backend and _small_tiles, autouse)
    GRAD_RTOL,
    _small_tiles,
    assert_grad_close,
    check_against_composite,
    composite,
    lm,
    make_inputs,
    objective,
    op_backend,
    weights_for,
)

import masksub_kernels as mk

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


@pytest.fixture(autouse=True)
def _recompute_kernels_both_ways(monkeypatch):
    """The recompute op's own backward kernels, as for class ids under torch.compile / CUDA graphs (in eager mode,
    and for probabilities everywhere, its Triton backward runs the chunk loop instead: backward_in_chunks)."""
    monkeypatch.setattr(lm, "sync_free", lambda hidden: True)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("mode", "kind"), [("ce", "index_ignore"), ("ce", "dense"), ("bce", "index")])
def test_online_states_over_several_tiles_of_one_program(op_backend, monkeypatch, temperature, mode, kind):  # noqa: F811
    monkeypatch.setattr(lm, "_target_programs", lambda device: 1)  # one split: each program walks every tile
    h, hs, w, b, target = make_inputs(kind=kind, seed=7)
    b = b + torch.linspace(-40.0, 40.0, b.shape[0], device=DEVICE)  # each row's max moves into a later class tile
    options = {"temperature": temperature, "label_smoothing": 0.1, "main_weight": 0.6, "sub_weight": 0.3}
    check_against_composite((h, hs, w, b, target), mode=mode, reduction="none", **options)


def test_wide_weight_offsets_give_the_same_values(op_backend, monkeypatch):  # noqa: F811
    # WIDE_W (W's offsets in int64, for C D >= 2^31) computes the very same values as the int32 offsets: with the
    # threshold lowered every launch takes it (forward, dH, dW), against the default run, to the last bit
    h, hs, w, b, target = make_inputs(kind="index_ignore", seed=11)
    flags, kernel_inputs = [], lm._kernel_inputs

    def spy(*args):  # the launchers' common flags
        out = kernel_inputs(*args)
        flags.append(out[2])
        return out

    monkeypatch.setattr(lm, "_kernel_inputs", spy)

    def run():
        inputs = [t.detach().clone().requires_grad_(True) for t in (h, hs, w, b)]
        out = mk.linear_masksub_loss(*inputs, target, reduction="none", temperature=2.0)
        (out.loss * torch.linspace(0.5, 1.5, target.shape[0], device=DEVICE)).sum().backward()
        return [out.loss, out.main, out.sub] + [t.grad for t in inputs]

    narrow = run()
    monkeypatch.setattr(lm, "WIDE_OFFSETS", 1)
    wide = run()
    assert {f["WIDE_W"] for f in flags} == ({False, True} if op_backend == "triton" else set())
    for a, b_ in zip(narrow, wide):
        assert torch.equal(a, b_)


def test_wide_weight_offsets_from_two_to_the_31_elements():
    # the launcher's flag: the largest offset into W a tile computes, its masked lanes included ((C rounded up to
    # BLOCK_N - 1) x W's row stride + D rounded up to BLOCK_K - 1) >= 2^31 (a 256000 x 18432 head), not BERT's
    # 30522 x 768 nor a 128256 x 16384 one (2.10e9); 131072 x 16384's last offset is 2^31 - 1, 131073 rounds up to
    # 131200 rows (BLOCK_N 128); 3 rows 2^28 apart (3 x 2^28 < 2^31) are a tile of 16: 15 x 2^28 (helper-348: the
    # masked lanes' int32 offsets wrapped, harmless, but an overflow the interpreter's debug options assert)
    def flag(classes, depth, stride=None, dtype=torch.bfloat16):
        h = torch.empty(4, depth, dtype=dtype, device="meta")
        w = torch.empty(classes, stride or depth, dtype=dtype, device="meta")[:, :depth]
        target = torch.zeros(4, dtype=torch.int64, device="meta")
        return lm._kernel_inputs(h, h, w, None, target, -100, False, None)[2]["WIDE_W"]

    assert not flag(30522, 768) and not flag(2**31 // 16384, 16384) and not flag(128256, 16384)
    assert flag(2**31 // 16384 + 1, 16384) and flag(256000, 18432)
    assert flag(3, 16, 2**28, torch.float32) and not flag(3, 16, 2**31 // 16 - 1, torch.float32)


def test_weight_rows_past_two_to_the_31_elements_are_read(op_backend):  # noqa: F811
    # W's rows 2^30 elements apart (untouched pages of a large storage; W's pointer 2^31 elements in, so that a
    # wrapped int32 offset would read wrong but allocated memory): the launcher sets WIDE_W and the kernels read
    # the right rows: the same values, to the bit, as a contiguous copy of W (forward, dH, dHs, dW, db)
    depth, classes, step = 16, 3, 2**30
    try:
        storage = torch.empty(2**31 + classes * step, dtype=torch.bfloat16, device=DEVICE)
    except (RuntimeError, MemoryError):
        pytest.skip("no 8 GiB of address space for the storage")
    h, hs, w, b, _ = make_inputs(rows=8, depth=depth, classes=classes, dtype=torch.bfloat16, kind="index", seed=5)
    target = torch.arange(8, device=DEVICE) % classes
    far = storage.as_strided((classes, depth), (step, 1), 2**31)
    far.copy_(w)

    def run(weight):
        inputs = [t.detach().clone().requires_grad_(True) for t in (h, hs, b)]
        leaf = weight.detach().requires_grad_(True)
        out = mk.linear_masksub_loss(inputs[0], inputs[1], leaf, inputs[2], target, reduction="none")
        (out.loss * torch.linspace(0.5, 1.5, 8, device=DEVICE)).sum().backward()
        return [out.loss, out.main, out.sub, inputs[0].grad, inputs[1].grad, leaf.grad, inputs[2].grad]

    for got, expected in zip(run(far), run(w.contiguous())):
        assert torch.equal(got, expected)


# (rows that count, MAX_COUNT_SPLITS, the splits the kernels choose, the grid's splits)
SPLIT_CASES = [(40, 8, 2, 5), (20, 8, 3, 5), (5, 8, 5, 5), (0, 8, None, 5), (20, 2, 2, 2), (5, 2, 2, 2)]


@pytest.mark.parametrize(("counted", "cap", "splits", "slots"), SPLIT_CASES)
@pytest.mark.triton
def test_class_splits_follow_the_counted_rows(monkeypatch, counted, cap, splits, slots):
    # The forward and dH choose their class splits on the device from the count (MLM labels: few rows count, the
    # grid sized for all of them): 40 rows in 3 row tiles of 16, 160 classes in 5 tiles of 32, 6 programs to fill.
    # Every row counts: 3 tiles x 2 splits; 20 count (2 tiles): 3 splits (5 tiles in runs of 2); 5 (1 tile): 5;
    # with MAX_COUNT_SPLITS = 2 the grid has 2 (where dH and its sum must agree on the cap). The forward's partial
    # states say which splits ran (a finite max in each split of a counted row, -inf in the grid's others; the
    # ignored rows' never written); the values and gradients (dH's slabs summed by the same choice) against the
    # composite, with the counted rows spread among the ignored ones
    if not mk.triton_interpreted():
        pytest.skip("the interpreter's tiles and programs (a GPU has its own)")
    monkeypatch.setattr(lm, "_target_programs", lambda device: 6)
    monkeypatch.setattr(lm, "MAX_COUNT_SPLITS", cap)
    h, hs, w, b, target = make_inputs(rows=40, classes=160, kind="index", seed=3)
    counted_rows = torch.randperm(40, generator=torch.Generator().manual_seed(counted))[:counted].to(DEVICE)
    target = torch.full_like(target, -100).index_copy_(0, counted_rows, target[counted_rows])
    parts, combine = [], lm.kernels.combine_states
    monkeypatch.setattr(lm.kernels, "combine_states", lambda part, *args: parts.append(part) or combine(part, *args))
    with mk.use_backend("triton"):
        check_against_composite((h, hs, w, b, target), reduction="none", temperature=2.0, label_smoothing=0.1)
    (part,) = parts
    ran = torch.isfinite(part[lm.kernels.P_M_Z]).cpu()  # [the grid's splits, M]
    assert ran.shape == (slots, 40)
    is_counted = torch.zeros(40, dtype=torch.bool).index_fill_(0, counted_rows.cpu(), True)
    assert (part[:, :, ~is_counted.to(DEVICE)] == 0).all()  # not written: the zero fill
    if counted:
        assert ran[:, is_counted].sum(0).tolist() == [splits] * counted
        assert ran[:splits, is_counted].all()


@pytest.mark.triton
def test_probabilities_keep_the_splits_that_fill_the_gpu(monkeypatch):
    # every row counts with probability targets: the grid has only the splits that fill the GPU then (2 of the 5
    # class tiles for 3 row tiles and 6 programs), no room for fewer counted rows
    if not mk.triton_interpreted():
        pytest.skip("the interpreter's tiles and programs (a GPU has its own)")
    monkeypatch.setattr(lm, "_target_programs", lambda device: 6)
    parts, combine = [], lm.kernels.combine_states
    monkeypatch.setattr(lm.kernels, "combine_states", lambda part, *args: parts.append(part) or combine(part, *args))
    inputs = make_inputs(rows=40, classes=160, kind="dense", seed=3)
    with mk.use_backend("triton"):
        check_against_composite(inputs, reduction="none", temperature=2.0)
    assert parts[0].shape[1] == 2 and torch.isfinite(parts[0][lm.kernels.P_M_Z]).all()


@pytest.mark.parametrize("counted", [0, 5, 17, 20, 32, 40, 64])
@pytest.mark.triton
def test_weight_gradient_splits_share_the_counted_row_tiles(monkeypatch, counted):
    # dW's row splits take the counted row tiles in turn (the counted rows come first in the op's order, ascending,
    # their number read on the device): 64 rows in 4 tiles of 16, 5 class tiles of 32 and 10 programs to fill give 2
    # splits, split j taking the counted positions p with (p // 16) % 2 == j. With 17 to 32 counted rows (2 tiles)
    # each split gets one, where contiguous runs of the 4 tiles gave the first split both and left the second idle.
    # Each split's fp32 partial dW is checked against the float64 composite's dW of its own rows alone (the other
    # rows' per-row grads set to 0), and the values and gradients of the call against the composite's
    if not mk.triton_interpreted():
        pytest.skip("the interpreter's tiles and programs (a GPU has its own)")
    monkeypatch.setattr(lm, "_target_programs", lambda device: 10)
    h, hs, w, b, target = make_inputs(rows=64, classes=160, kind="index", seed=4)
    counted_rows = torch.randperm(64, generator=torch.Generator().manual_seed(counted))[:counted].sort().values
    target = torch.full_like(target, -100).index_copy_(0, counted_rows.to(DEVICE), target[counted_rows.to(DEVICE)])
    parts, sum_splits = [], lm._sum_splits
    monkeypatch.setattr(lm, "_sum_splits", lambda part, dtype: parts.append(part) or sum_splits(part, dtype))
    options = {"reduction": "none", "temperature": 2.0}
    with mk.use_backend("triton"):
        check_against_composite((h, hs, w, b, target), **options)
    dw_part = parts[0]  # [splits, C, D] (then db's [splits, C])
    assert dw_part.shape == (2, 160, 24)
    for split in range(2):
        rows = counted_rows[(torch.arange(counted) // 16) % 2 == split]  # the split's counted rows
        if not rows.numel():
            assert (dw_part[split] == 0).all()  # never written: the zero fill
            continue
        in_split = torch.zeros(64, dtype=torch.float64).index_fill_(0, rows, 1.0).to(DEVICE)
        expected, (_, _, w64, _) = composite(h, hs, w, b, target, **options)
        objective(expected, [g * in_split for g in weights_for("none", 64)]).backward()
        assert_grad_close(dw_part[split], w64.grad, GRAD_RTOL[torch.float32], f"split {split}")


@triton.jit
def _class_splits_probe(count_ptr, out_ptr, class_tiles, target_programs, max_splits, BLOCK: tl.constexpr,
                        BLOCK_M: tl.constexpr):  # fmt: skip
    # the kernels' own choice (_class_splits) for a block of counts: (splits, class tiles per split) of each
    i = tl.arange(0, BLOCK)
    count = tl.load(count_ptr + i)
    splits, per_split = lm.kernels._class_splits(count, class_tiles, target_programs, max_splits, BLOCK_M)
    tl.store(out_ptr + i, splits)
    tl.store(out_ptr + BLOCK + i, per_split)


@pytest.mark.parametrize("target", [1, 4, 6, 264])
@pytest.mark.parametrize(
    ("rows", "classes", "every_row_counts"), [(40, 160, False), (300, 70, False), (200, 500, True), (1, 30, False)]
)
@pytest.mark.triton
def test_class_splits_stay_within_the_grid_and_slabs(monkeypatch, target, rows, classes, every_row_counts):
    # for every count in [0, M] (M for probabilities), the kernels' splits E fit the launcher's grid and dH's slabs
    # (A E <= slabs for the A row tiles that hold counted rows), and E runs of per_split tiles cover the class tiles
    # with none empty (tiles of 16 x 32: the choice depends on the tile counts only)
    monkeypatch.setattr(lm, "_target_programs", lambda device: target)
    block_m, block_n = 16, 32
    row_tiles, class_tiles = lm.cdiv(rows, block_m), lm.cdiv(classes, block_n)
    (grid_rows, max_splits), slabs = lm._class_split_grid(row_tiles, class_tiles, every_row_counts, DEVICE)
    assert grid_rows == row_tiles and 1 <= max_splits <= class_tiles
    counts = [rows] if every_row_counts else list(range(rows + 1))
    block = triton.next_power_of_2(len(counts))
    count = torch.tensor(counts + [0] * (block - len(counts)), dtype=torch.int32, device=DEVICE)
    out = torch.empty(2 * block, dtype=torch.int32, device=DEVICE)
    _class_splits_probe[(1,)](count, out, class_tiles, target, max_splits, BLOCK=block, BLOCK_M=block_m)
    for n, splits, per_split in zip(counts, out[:block].tolist(), out[block:].tolist()):
        active = lm.cdiv(n, block_m)
        assert 1 <= splits <= max_splits and active * splits <= slabs, (n, splits)
        assert (splits - 1) * per_split < class_tiles <= splits * per_split, (n, splits, per_split)


def test_combining_splits_skips_one_without_teacher_mass():
    # helper-140: a class split whose own max saw a -inf sub logit at teacher weight 1 holds D_t = -inf; about the
    # row's max its teacher mass is 0 (exp(-201) in fp32), and 0 x -inf made the sub loss NaN
    from masksub_kernels.ops import _linear_loss_kernels as kernels
    from masksub_kernels.ops.masksub_loss import SUB

    part = torch.zeros(11, 2, 1)
    for m, l in ((kernels.P_M_Z, kernels.P_L_Z), (kernels.P_M_S, kernels.P_L_S), (kernels.P_M_T, kernels.P_L_T)):
        part[m, :, 0], part[l, :, 0] = torch.tensor([-200.0, 1.0]), 1.0
    part[kernels.P_S_Z, 1, 0], part[kernels.P_D_T, 0, 0] = 1.0, float("-inf")
    both = kernels.combine_states(part, bce=False, has_sub=True, temperature=2.0, classes=4)
    alone = kernels.combine_states(part[:, 1:], bce=False, has_sub=True, temperature=2.0, classes=4)
    assert bool(torch.isfinite(both[SUB]).all()) and torch.equal(both[SUB], alone[SUB])


def test_masked_lanes_of_a_tile_past_two_to_the_31_elements_take_int64_offsets():
    # helper-348: 3 rows of W 2^28 elements apart (3 x 2^28 < 2^31: WIDE_W was off), a tile of BLOCK_N = 16 columns:
    # the masked columns' int32 offsets (up to 15 x 2^28) wrapped. Harmless (masked), but an overflow, which the
    # interpreter's check (tests/conftest.py: debug options) asserts; WIDE_W now counts the tile's padded extent
    if "triton" not in mk.available_backends():
        pytest.skip("needs the Triton backend")
    depth, classes, step = 16, 3, 2**28
    storage = torch.empty((classes - 1) * step + depth, dtype=torch.float32, device=DEVICE)  # 2 GiB, untouched pages
    w = storage.as_strided((classes, depth), (step, 1))
    gen = torch.Generator().manual_seed(0)
    w.copy_(torch.randn(classes, depth, generator=gen))
    h, hs = (torch.randn(8, depth, generator=gen).to(DEVICE) for _ in range(2))
    target = torch.arange(8, device=DEVICE) % classes
    with mk.use_backend("triton"):
        got = mk.linear_masksub_loss(h, hs, w, None, target, reduction="none")
        expected = mk.linear_masksub_loss(h, hs, w.contiguous(), None, target, reduction="none")
    assert torch.equal(got.loss, expected.loss)

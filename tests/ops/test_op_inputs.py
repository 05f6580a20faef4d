"""Bad input to the token and grid ops: a clear ValueError/TypeError on every backend, never a silent wrong result;
edge inputs (negative seeds, unvalidated out-of-range ids, meta tensors) give the same result on every backend.
The losses have theirs in tests/ops/test_loss_inputs.py."""

import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, kernel_backends, property_settings
from hypothesis import given
from hypothesis import strategies as st

import masksub_kernels as mk
from masksub_kernels.ops import _token_select_reference as reference

# ---------------------------------------------------------------------------------------------------------------
# Seeds: any int64, an int and a seed tensor holding it draw the same mask
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, -(2**63), -12345678901, 2**63 - 1])
def test_negative_seeds_are_int64_keys_on_every_backend(backend, seed):
    as_tensor = torch.tensor([seed], dtype=torch.int64, device=DEVICE)
    with mk.use_backend("torch"):
        expected = mk.random_keep_indices(3, 40, 12, seed=seed, device="cpu")
        expected_cells = mk.random_grid_mask(2, (3, 4), 5, seed=seed, device="cpu")
    for value in (seed, as_tensor):
        assert torch.equal(mk.random_keep_indices(3, 40, 12, seed=value, device=DEVICE).cpu(), expected)
        assert torch.equal(mk.random_grid_mask(2, (3, 4), 5, seed=value, device=DEVICE).cpu(), expected_cells)


@pytest.mark.parametrize("seed", [1.5, True, "7"])
def test_a_seed_of_another_type_is_a_type_error_naming_every_seed_the_ops_take(seed):
    # helper-261: the message said "an int or None", where the ops take a one-element int64 tensor too
    expected = r"seed must be an int, an int64 tensor of one element, or None, got "
    with pytest.raises(TypeError, match=expected):
        mk.random_keep_indices(1, 4, 2, seed=seed)
    with pytest.raises(TypeError, match=expected):
        mk.random_token_select(torch.randn(1, 5, 2), 0.5, seed=seed)


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_seeds_beyond_int64_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an int64 value, in \[-2\*\*63, 2\*\*63\)"):
        mk.random_keep_indices(1, 4, 2, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# Unvalidated ids: an out-of-range id reads a row of zeros and receives no gradient, on every backend
# ---------------------------------------------------------------------------------------------------------------


def test_unvalidated_out_of_range_ids_read_zeros_on_every_backend(backend):
    x = torch.randn(2, 1 + 6, 4, device=DEVICE, requires_grad=True)
    ids = torch.tensor([[0, 6, 3], [-1, 2, 5]], device=DEVICE)  # 6 and -1 are outside [0, 6)
    y = mk.gather_tokens(x, ids, validate_ids=False)
    expected = torch.stack([x[0, [0, 1, 1, 4]], x[1, [0, 1, 3, 6]]]).detach()
    expected[0, 2] = 0  # the id 6
    expected[1, 1] = 0  # the id -1
    assert torch.equal(y.detach(), expected)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    grad_x = torch.zeros_like(x)
    grad_x[:, 0] = grad_y[:, 0]
    grad_x[0, 1], grad_x[0, 4] = grad_y[0, 1], grad_y[0, 3]
    grad_x[1, 3], grad_x[1, 6] = grad_y[1, 2], grad_y[1, 3]
    assert torch.equal(x.grad, grad_x)


def test_validated_out_of_range_ids_are_refused():
    x = torch.randn(1, 5, 2)
    with pytest.raises(ValueError, match=r"ids must index patch tokens in \[0, 4\), got values in \[0, 4\]"):
        mk.gather_tokens(x, torch.tensor([[0, 4]]), validate_ids=True)


# ---------------------------------------------------------------------------------------------------------------
# Scalars and flags
# ---------------------------------------------------------------------------------------------------------------


def test_an_empty_grid_says_so(backend):
    # helper-105: "num_tokens must be >= 1, got 0" for images of height 0
    with pytest.raises(ValueError, match=r"the number of grid cells \(an empty grid\) must be >= 1, got 0"):
        mk.mask_image_grid(torch.zeros(1, 1, 0, 4, device=DEVICE), 0.5, cell_size=2, seed=1)
    with pytest.raises(ValueError, match=r"the number of grid cells \(an empty grid\) must be >= 1, got 0"):
        mk.mask_tokens_grid(torch.zeros(1, 4, 0, 3, device=DEVICE), torch.zeros(3, device=DEVICE), 0.5, cell_size=2)


@pytest.mark.parametrize(
    ("dtype", "fill_value"),
    [
        (torch.float16, 1e6),
        (torch.bfloat16, 1e39),
        (torch.float32, math.inf),
        (torch.float32, math.nan),
        (torch.float32, 10**400),
        (torch.float16, -1e6),  # helper-342: below -65504 (kills `value > largest` for `abs(value) > largest`)
    ],  # an int beyond the float range: was an OverflowError (helper-105)
)
def test_fill_value_must_stay_finite_in_the_images_dtype(backend, dtype, fill_value):
    images = torch.zeros(1, 1, 4, 4, dtype=dtype, device=DEVICE)
    with pytest.raises(ValueError, match=f"fill_value must be finite and within ±.* for {dtype} images"):
        mk.mask_image_grid(images, cell_size=2, seed=1, fill_value=fill_value)


def test_largest_finite_fill_value_is_written_on_every_backend(backend):
    images = torch.zeros(1, 1, 4, 4, dtype=torch.float16, device=DEVICE)
    out, mask = mk.mask_image_grid(images, cell_size=2, seed=1, fill_value=65504.0)
    removed = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]
    assert torch.equal(out, torch.where(removed, 65504.0, images))


@pytest.mark.parametrize(
    "call",
    [
        lambda: mk.random_keep_indices(2, 8, 4, seed=0, ordered="yes"),
        lambda: mk.random_token_select(torch.zeros(1, 5, 2), 0.5, seed=0, ordered=1),
        lambda: mk.gather_tokens(torch.zeros(1, 5, 2), torch.tensor([[0, 1]]), validate_ids="no"),
    ],
)
def test_flags_must_be_bools(call):
    with pytest.raises(TypeError, match="must be a bool, got"):
        call()


@pytest.mark.parametrize("validate_ids", [None, True, False])
def test_ids_that_are_not_a_tensor_are_a_type_error(backend, validate_ids):
    # the default of validate_ids read ids.device first: an AttributeError
    with pytest.raises(TypeError, match=r"ids must be a torch\.Tensor, got list"):
        mk.gather_tokens(torch.zeros(1, 5, 2, device=DEVICE), [[0, 1]], validate_ids=validate_ids)


# ---------------------------------------------------------------------------------------------------------------
# always_keep / drop_first: kind, dtype, shape and device always checked; the always-keep count when validating
# ---------------------------------------------------------------------------------------------------------------

MASK_CALLS = {
    "random_keep_indices": lambda **masks: mk.random_keep_indices(2, 8, 3, seed=1, device=DEVICE, **masks),
    "random_token_select": lambda **masks: mk.random_token_select(torch.zeros(2, 9, 2, device=DEVICE), 0.6, seed=1,
                                                                  **masks),
}  # fmt: skip
BAD_MASKS = [
    (torch.zeros(2, 8, dtype=torch.uint8), TypeError, "must be a bool tensor, got torch.uint8"),
    (torch.zeros(2, 8).tolist(), TypeError, "must be a bool torch.Tensor or None, got list"),
    (torch.zeros(2, 9, dtype=torch.bool), ValueError, r"must be \[batch=2, tokens=8\] .*got shape \(2, 9\)"),
    (torch.zeros(16, dtype=torch.bool), ValueError, r"must be .*got shape \(16,\)"),
    # helper-342's mutation audit of ops/_token_select_checks.py:75 (the batch dimension unchecked): one row for two
    (torch.zeros(1, 8, dtype=torch.bool), ValueError, r"must be \[batch=2, tokens=8\] .*got shape \(1, 8\)"),
    (torch.zeros(2, 8, dtype=torch.bool, device="meta"), ValueError, "must be on the op's device"),
]


@pytest.mark.parametrize("name", ["always_keep", "drop_first"])
@pytest.mark.parametrize(("mask", "error", "match"), BAD_MASKS)
@pytest.mark.parametrize("op", MASK_CALLS)
def test_bad_masks_are_refused_on_every_backend(backend, op, name, mask, error, match):
    if isinstance(mask, torch.Tensor) and mask.device.type != "meta":
        mask = mask.to(DEVICE)
    with pytest.raises(error, match=f"{name} {match}"):
        MASK_CALLS[op](**{name: mask})


@pytest.mark.parametrize("op", MASK_CALLS)
def test_too_many_always_keep_positions_are_refused_when_validated(backend, op):
    keep = torch.zeros(2, 8, dtype=torch.bool, device=DEVICE)
    keep[1, :4] = True  # K = 3
    with pytest.raises(ValueError, match="always_keep marks 4 positions in row 1, more than the 3 tokens kept"):
        MASK_CALLS[op](always_keep=keep, validate_masks=True)
    if DEVICE.type == "cpu":  # validated by default on CPU tensors only (reading values syncs a GPU)
        with pytest.raises(ValueError, match="always_keep marks 4"):
            MASK_CALLS[op](always_keep=keep)
    with pytest.raises(TypeError, match="validate_masks must be a bool"):
        MASK_CALLS[op](always_keep=keep, validate_masks="no")
    keep[1, 3] = False  # exactly K: accepted
    MASK_CALLS[op](always_keep=keep, drop_first=~keep, validate_masks=True)


# ---------------------------------------------------------------------------------------------------------------
# Meta tensors: every op gives the shapes (its registered fake) on every backend
# ---------------------------------------------------------------------------------------------------------------


def test_meta_tensors_on_every_backend(backend):
    meta = torch.device("meta")
    x = torch.empty(2, 1 + 8, 4, device=meta)
    y, ids = mk.random_token_select(x, 0.5, seed=1)
    assert y.is_meta and y.shape == (2, 5, 4) and ids.shape == (2, 4) and ids.dtype == torch.int64
    assert mk.gather_tokens(x, torch.empty(2, 3, dtype=torch.int64, device=meta)).shape == (2, 4, 4)
    assert mk.random_keep_indices(3, 10, 4, seed=1, device=meta).shape == (3, 4)
    assert mk.random_grid_mask(2, (2, 3), 2, seed=1, device=meta).shape == (2, 2, 3)
    out, mask = mk.mask_image_grid(torch.empty(2, 3, 8, 8, device=meta), cell_size=4, seed=1)
    assert out.is_meta and out.shape == (2, 3, 8, 8) and mask.shape == (2, 2, 2)
    out, mask = mk.mask_tokens_grid(torch.empty(1, 4, 4, 6, device=meta), torch.empty(6, device=meta), cell_size=2)
    assert out.is_meta and out.shape == (1, 4, 4, 6) and mask.shape == (1, 2, 2)
    logits = torch.empty(3, 5, device=meta)
    loss = mk.masksub_loss(logits, logits.clone(), torch.empty(3, 5, device=meta))
    assert loss.loss.is_meta and loss.loss.dtype == torch.float32


def test_cpu_ops_under_another_default_device():
    # helper-114: the CPU draws made their constants with torch.tensor() on the default device, so under
    # torch.set_default_device / `with torch.device(...)` they failed ("not on the expected device cpu"); the
    # token grid mask's CPU output was made on that device; seed=None drew from its generator, not the CPU's
    from masksub_kernels import _philox

    x, tokens, token = torch.randn(2, 9, 4), torch.randn(2, 4, 4, 3), torch.randn(3)
    images = torch.randn(2, 3, 8, 8)

    def calls():
        torch.manual_seed(7)
        return (
            mk.random_keep_indices(3, 10, 4, seed=None, device="cpu"),
            *mk.random_token_select(x, 0.5, seed=1),
            *mk.mask_image_grid(images, cell_size=4, seed=2),
            *mk.mask_tokens_grid(tokens, token, cell_size=2, seed=3),
        )

    with mk.use_backend("torch"):
        expected = calls()
        uint64_products = _philox._uint64_products()
        _philox._uint64_products.cache_clear()  # its first answer is cached for the process: asked under the context
        with torch.device("meta"):
            results = calls()
    assert _philox._uint64_products() == uint64_products
    for result, want in zip(results, expected, strict=True):
        assert result.device.type == "cpu" and torch.equal(result, want)


# ---------------------------------------------------------------------------------------------------------------
# Property tests: random valid arguments agree with the reference on every backend; random invalid ones raise
# ValueError or TypeError (nothing else, never a result) on every backend
# ---------------------------------------------------------------------------------------------------------------

SEEDS = st.integers(-(2**63), 2**63 - 1)


def _on_every_backend(call):
    """call() under the reference and each kernel backend that runs on DEVICE; the results of the kernels, and the
    reference's. The calls put their tensors on DEVICE: compiled Triton and the CUDA extension refuse CPU tensors
    (only the interpreter and the CUDA emulator take them), so a CPU call fails on a GPU machine."""
    with mk.use_backend("torch"):
        expected = call()
    results = {}
    for name in kernel_backends():
        with mk.use_backend(name):
            results[name] = call()
    return expected, results


@property_settings(12)
@given(
    batch=st.integers(0, 3),
    grid=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    keep_fraction=st.floats(0.0, 1.0),
    seed=SEEDS,
    ordered=st.booleans(),
)
def test_masks_agree_with_the_reference(batch, grid, keep_fraction, seed, ordered):
    cells = grid[0] * grid[1]
    keep = max(1, round(keep_fraction * cells))
    expected, results = _on_every_backend(
        lambda: mk.random_keep_indices(batch, cells, keep, seed=seed, ordered=ordered, device=DEVICE)
    )
    assert all(torch.equal(result, expected) for result in results.values())
    expected, results = _on_every_backend(lambda: mk.random_grid_mask(batch, grid, keep, seed=seed, device=DEVICE))
    assert all(torch.equal(result, expected) for result in results.values())


@property_settings(10)
@given(
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    cell=st.integers(1, 3),
    ratio=st.floats(0.0, 0.9),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=SEEDS,
    fill=st.floats(-100.0, 100.0),
)
def test_image_and_token_masks_agree_with_the_reference(grid, cell, ratio, dtype, seed, fill):
    cells = grid[0] * grid[1]
    if int(cells * (1.0 - ratio)) < 1:
        return
    generator = torch.Generator().manual_seed(seed % 2**32)
    images = torch.randn(2, 3, grid[0] * cell, grid[1] * cell, generator=generator).to(DEVICE, dtype)
    expected, results = _on_every_backend(
        lambda: mk.mask_image_grid(images, ratio, cell_size=cell, seed=seed, fill_value=fill)
    )
    for masked, mask in results.values():
        assert torch.equal(masked, expected[0]) and torch.equal(mask, expected[1])
    tokens, mask_token = images.permute(0, 2, 3, 1), torch.randn(3, generator=generator).to(DEVICE, dtype)
    expected, results = _on_every_backend(
        lambda: mk.mask_tokens_grid(tokens, mask_token, ratio, cell_size=cell, seed=seed)
    )
    assert all(torch.equal(result[0], expected[0]) for result in results.values())


# Invalid values per argument (kind and value errors); one argument of a valid call is replaced by one of these.
BAD_ARGUMENTS = {
    "batch_size": [-1, 2.0, True, None],
    "num_tokens": [0, 8193, 3.0, "8"],
    "num_keep": [0, 9, 1.5],
    "seed": [2**63, -(2**63) - 1, 1.5, "7", torch.tensor([1], dtype=torch.int32), torch.tensor([1, 2])],
    "mask_ratio": [-0.1, 1.0, math.nan, math.inf, "0.5", None, True],
    "cell_size": [0, -2, 2.0, True, 3],  # 3 does not divide the 8 x 8 images
    "fill_value": [math.nan, -math.inf, 1e39, "0", None],
    "num_prefix_tokens": [-1, 9, 1.0, None],
    "device": ["gpu", 1.5],
    "ordered": ["yes", 1, None],
}


def _bad_call(op: str, argument: str, value):
    """A call of ``op`` that is valid but for ``argument`` = ``value``; None when op has no such argument."""
    calls = {
        "random_keep_indices": (
            lambda a: mk.random_keep_indices(a["batch_size"], a["num_tokens"], a["num_keep"], seed=a["seed"],
                                             device=a["device"], ordered=a["ordered"]),
            {"batch_size": 2, "num_tokens": 8, "num_keep": 4, "seed": 1, "device": DEVICE, "ordered": False},
        ),
        "random_token_select": (
            lambda a: mk.random_token_select(torch.zeros(2, 9, 3, device=DEVICE), a["mask_ratio"], seed=a["seed"],
                                             num_prefix_tokens=a["num_prefix_tokens"], ordered=a["ordered"]),
            {"mask_ratio": 0.5, "seed": 1, "num_prefix_tokens": 1, "ordered": False},
        ),
        "mask_image_grid": (
            lambda a: mk.mask_image_grid(torch.zeros(1, 2, 8, 8, device=DEVICE), a["mask_ratio"],
                                         cell_size=a["cell_size"], seed=a["seed"], fill_value=a["fill_value"]),
            {"mask_ratio": 0.5, "cell_size": 4, "seed": 1, "fill_value": 0.0},
        ),
        "mask_tokens_grid": (
            lambda a: mk.mask_tokens_grid(torch.zeros(1, 8, 8, 2, device=DEVICE), torch.zeros(2, device=DEVICE),
                                          a["mask_ratio"], cell_size=a["cell_size"], seed=a["seed"]),
            {"mask_ratio": 0.5, "cell_size": 4, "seed": 1},
        ),
        "random_grid_mask": (
            lambda a: mk.random_grid_mask(a["batch_size"], a["grid_size"], a["num_keep"], seed=a["seed"],
                                          device=a["device"]),
            {"batch_size": 2, "grid_size": (2, 3), "num_keep": 4, "seed": 1, "device": DEVICE},
        ),
        "gather_tokens": (
            lambda a: mk.gather_tokens(torch.arange(2 * 9 * 3.0, device=DEVICE).view(2, 9, 3),
                                       torch.tensor([[0, 5], [7, 2]], device=DEVICE),
                                       num_prefix_tokens=a["num_prefix_tokens"]),
            {"num_prefix_tokens": 1},
        ),
    }  # fmt: skip
    call, arguments = calls[op]
    if argument not in arguments:
        return None
    return lambda: call({**arguments, argument: value})


@property_settings(40)
@given(
    op=st.sampled_from(["random_keep_indices", "random_token_select", "mask_image_grid", "mask_tokens_grid"]),
    bad=st.sampled_from([(name, index) for name, values in BAD_ARGUMENTS.items() for index in range(len(values))]),
    backend_name=st.sampled_from(["torch", "triton", "cuda"]),
)
def test_invalid_arguments_raise_value_or_type_errors(op, bad, backend_name):
    if backend_name not in mk.available_backends():
        return
    argument, index = bad
    value = BAD_ARGUMENTS[argument][index]
    if isinstance(value, torch.Tensor):
        value = value.to(DEVICE)
    call = _bad_call(op, argument, value)
    if call is None:
        return
    with mk.use_backend(backend_name), pytest.raises((ValueError, TypeError)):
        call()


# NumPy scalars where Python numbers go (sizes, counts, ratios, cells, fill values, seeds), as the losses' options
NUMPY_ARGUMENTS = {"batch_size": np.int64(2), "num_tokens": np.int32(8), "num_keep": np.int64(4),
                   "mask_ratio": np.float32(0.5), "cell_size": np.int64(4), "fill_value": np.float32(0.25),
                   "num_prefix_tokens": np.int64(1), "seed": np.uint32(7), "grid_size": np.int64(3),
                   "grid_pair": (np.int64(2), np.int32(3))}  # fmt: skip
NUMPY_OPS = ["random_keep_indices", "random_token_select", "mask_image_grid", "mask_tokens_grid", "random_grid_mask",
             "gather_tokens"]  # fmt: skip


@pytest.mark.parametrize(
    ("num_tokens", "error", "match"),
    [(10.7, TypeError, "num_tokens must be an int, got float"), (True, TypeError, "got bool"),
     ("8", TypeError, "got str"), (-4, ValueError, "num_tokens must be >= 1, got -4")],
)  # fmt: skip
def test_num_kept_tokens_checks_its_count(num_tokens, error, match):
    with pytest.raises(error, match=match):
        mk.num_kept_tokens(num_tokens, 0.5)
    assert mk.num_kept_tokens(np.int64(10), np.float64(0.5)) == 5


@pytest.mark.parametrize(
    ("op", "argument"),
    [(op, name) for op in NUMPY_OPS for name in NUMPY_ARGUMENTS
     if _bad_call(op, "grid_size" if name == "grid_pair" else name, None) is not None],
)  # fmt: skip
def test_numpy_scalars_act_as_python_numbers(backend, op, argument):
    value, name = NUMPY_ARGUMENTS[argument], "grid_size" if argument == "grid_pair" else argument
    python = tuple(v.item() for v in value) if isinstance(value, tuple) else value.item()
    got, want = _bad_call(op, name, value)(), _bad_call(op, name, python)()
    for a, b in zip(*(out if isinstance(out, tuple) else (out,) for out in (got, want))):
        assert a.shape == b.shape and torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# Tracing other than torch.compile (make_fx / AOTAutograd): the custom op runs, never a kernel on a tensor without
# data
# ---------------------------------------------------------------------------------------------------------------

OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck_of_the_token_and_grid_ops(backend):
    from masksub_kernels.ops import grid_mask, token_grid_mask, token_select

    x = torch.randn(2, 1 + 8, 4, device=DEVICE, requires_grad=True)
    ids = torch.tensor([[0, 5, 2], [7, 1, 3]], device=DEVICE)
    torch.library.opcheck(token_select._gather_op.custom_op, (x, ids, None, 1), test_utils=OPCHECK_UTILS)
    keep = torch.tensor([[True] + [False] * 7, [False] * 8], device=DEVICE)
    for ordered, masks in ((False, (None, None)), (True, (keep, ~keep))):
        args = (x, 5, None, 3, 1, ordered, *masks)
        torch.library.opcheck(token_select._select_gather_op.custom_op, args, test_utils=OPCHECK_UTILS)
    cells = torch.tensor([[[True, False], [False, True]]], device=DEVICE)
    images = torch.randn(1, 3, 8, 8, device=DEVICE, requires_grad=True)
    torch.library.opcheck(grid_mask._mask_image_op.custom_op, (images, cells, 4, 0.5), test_utils=OPCHECK_UTILS)
    args = (images, 3, None, 4, 2, 0.5)
    torch.library.opcheck(grid_mask._mask_image_random_op.custom_op, args, test_utils=OPCHECK_UTILS)
    tokens = torch.randn(1, 4, 4, 3, device=DEVICE, requires_grad=True)
    mask_token = torch.randn(3, device=DEVICE, requires_grad=True)
    args = (tokens, mask_token, cells, 2)
    torch.library.opcheck(token_grid_mask._mask_tokens_op.custom_op, args, test_utils=OPCHECK_UTILS)
    args = (tokens, mask_token, 3, None, 2, 2)
    torch.library.opcheck(token_grid_mask._mask_tokens_random_op.custom_op, args, test_utils=OPCHECK_UTILS)


def test_auto_skips_a_backend_that_an_op_lacks(monkeypatch):
    from masksub_kernels import _backend

    monkeypatch.setattr(_backend, "_requested", "auto")
    assert _backend.resolve_backend("cpu", implemented=("torch", "triton")) == "torch"
    monkeypatch.setattr(_backend, "_cuda_device_present", lambda: True)
    monkeypatch.setattr(_backend, "_serves", lambda name, device_type: name == "cuda")
    assert _backend.resolve_backend("cuda", implemented=("torch", "triton")) == "torch"
    assert _backend.resolve_backend("cuda", implemented=("torch", "triton", "cuda")) == "cuda"


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the fill is on for the CPU's op tests only (tests/conftest.py)")
def test_the_op_tests_run_with_uninitialised_memory_filled():
    # tests/conftest.py's _uninitialised_memory_filled: what an op reads without having written it is NaN here
    assert (
        torch.isnan(torch.empty(4)).all() and torch.empty(2, dtype=torch.int64).eq(torch.iinfo(torch.int64).max).all()
    )


def test_the_largest_sequence_is_accepted():
    # _common.py:39 `num_tokens <= MAX_TOKENS`: the bound itself is allowed (meta: shapes only, no kernel)
    from masksub_kernels.ops._common import MAX_TOKENS

    ids = mk.random_keep_indices(1, MAX_TOKENS, 1, seed=0, device="meta")
    assert ids.shape == (1, 1)


# helper-175's mutation audit of _token_rows.py: the fast path's id range


def test_token_rows_negative_unvalidated_id_alone_reads_zeros():
    # kills _token_rows.py:22 `(ids >= 0) & (ids < num_tokens)` -> `(ids < num_tokens)`: test_op_inputs' case mixes
    # the id -1 with the id 6, and the 6 alone sends the whole batch to the reference; a -1 alone took the
    # index_select fast path and read the sample's prefix row (or the previous sample's last row) instead of zeros
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3) + 1  # no zero anywhere
    with mk.use_backend("torch"):
        y = mk.gather_tokens(x, torch.tensor([[0, 1], [-1, 2]]), validate_ids=False)
    expected = torch.stack([x[0, [0, 1, 2]], x[1, [0, 1, 3]]])
    expected[1, 1] = 0  # the id -1
    assert torch.equal(y, expected)


# kills _token_rows.py:22 `(ids < num_tokens)` -> `(ids <= num_tokens)` (the fast path's upper bound off by one)
def test_token_rows_unvalidated_id_equal_to_the_token_count_alone_reads_zeros():
    # the id N is the first one out of range: test_torch_backend_row_copies_equal_the_references puts it beside a
    # -1, which alone sends the batch to the reference. Let through, the index_select fast path read the next
    # sample's prefix row (row N + P of sample 0 is row 0 of sample 1) instead of zeros, and the backward wrote
    # sample 0's gradient into that row
    x = (torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3) + 1).requires_grad_()  # no zero anywhere
    ids = torch.tensor([[4, 1], [0, 2]])  # N = 4 patch tokens: the id 4 is out of range
    with mk.use_backend("torch"):
        y = mk.gather_tokens(x, ids, validate_ids=False)
    expected = torch.stack([x[0, [0, 0, 2]], x[1, [0, 1, 3]]]).detach()
    expected[0, 1] = 0  # the id 4
    assert torch.equal(y, expected)
    grad_y = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3) + 100
    (grad_x,) = torch.autograd.grad(y, x, grad_y)
    assert torch.equal(grad_x, reference.scatter_reference(grad_y, ids, 1, 4))  # nothing scattered for the id 4


# helper-205's F6: the internal ops called directly (torch.ops.masksub.*: the public functions check these first)
# took sizes that Triton's kernels wrote or read past (a segfault, a silent wrong result) where the cuda binding
# refused them; now every backend refuses them, with a ValueError
def _direct_calls():
    ops, seed = torch.ops.masksub, 2**40 + 3
    x, images = torch.zeros(2, 11, 4, device=DEVICE), torch.zeros(2, 3, 64, 64, device=DEVICE)
    tokens, cells = torch.zeros(2, 16, 16, 6, device=DEVICE), torch.zeros(2, 2, 2, dtype=torch.bool, device=DEVICE)
    short, zero = torch.zeros(2, 9, dtype=torch.bool, device=DEVICE), torch.zeros(1, device=DEVICE)
    tall = torch.zeros(1, 2049, 1, dtype=torch.bool, device=DEVICE)  # the cells of a [1, 1, 65568, 32] image
    return {
        "select num_keep": (lambda: ops.select_tokens(seed, None, 2, 10, 11, DEVICE, False, True, None, None),
                            "num_keep"),
        "select always_keep": (lambda: ops.select_tokens(seed, None, 2, 10, 5, DEVICE, False, True, short, None),
                               "always_keep must be"),
        "select_gather num_keep": (lambda: ops.select_gather_tokens(x, seed, None, 11, 1, False, None, None),
                                   "num_keep"),
        "select_gather prefix": (lambda: ops.select_gather_tokens(x, seed, None, 2, 11, False, None, None),
                                 "num_prefix_tokens must be in"),
        "gather ids": (lambda: ops.gather_tokens(x, torch.zeros(2, 11, dtype=torch.long, device=DEVICE), None, 1),
                       "ids must be"),
        "scatter inv": (lambda: ops.scatter_tokens(x[:, :6], x[:, :5, 0].long(), x[:, :, 0].int(), 1, 10),
                        r"inv must be None or \[batch=2, num_tokens=10\]"),  # (cuda, triton: N from inv)
        "scatter ids": (lambda: ops.scatter_tokens(x[:, :6], x[:, :4, 0].long(), None, 1, 10), "ids must be"),
        "cell mask": (lambda: ops.grid_cell_mask(seed, None, 2, 4, 5, DEVICE), "num_keep"),
        "image random": (lambda: ops.mask_image_grid_random(images, seed, None, 32, 5, 0.0), "num_keep"),
        "image random cells": (lambda: ops.mask_image_grid_random(images, seed, None, 24, 1, 0.0), "not divisible"),
        # a fill beyond fp16's largest: inf on the cuda backend, refused by the others (helper-205's F5)
        "image fill": (lambda: ops.mask_image_grid(images.half(), cells, 32, 1e6), "fill_value must be finite"),
        "image random fill": (lambda: ops.mask_image_grid_random(images.half(), seed, None, 32, 1, 1e6),
                              "fill_value must be finite"),
        # past a GPU grid's 65535 blocks: the cuda launches failed ("invalid argument") where torch ran
        "image extent": (lambda: ops.mask_image_grid(zero.expand(1, 1, 65568, 32), tall, 32, 0.0),
                         "images must have at most"),
        "tokens backward extent": (lambda: ops.mask_tokens_grid_backward(zero.expand(1, 1, 1, 65535 * 256 + 1),
                                                                         cells[:1, :1, :1], 1, True, True),
                                   "grad_out must have at most"),
        "tokens mask_token": (lambda: ops.mask_tokens_grid(tokens, torch.zeros(5, device=DEVICE), cells, 8),
                              "mask_token must have"),
        "tokens random": (lambda: ops.mask_tokens_grid_random(tokens, torch.zeros(6, device=DEVICE), seed, None, 8, 5),
                          "num_keep"),
    }  # fmt: skip


@pytest.mark.parametrize("call", sorted(_direct_calls()))
def test_the_internal_ops_refuse_sizes_their_kernels_would_overrun_on_every_backend(backend, call):
    op, match = _direct_calls()[call]
    with mk.use_backend(backend), pytest.raises(ValueError, match=match):
        op()


def _direct_type_errors():
    ops, x = torch.ops.masksub, torch.zeros(2, 11, 4, device=DEVICE)
    seed32 = torch.zeros(1, dtype=torch.int32, device=DEVICE)  # helper-207: cuda refused it, torch and triton ran
    ids, inv64 = torch.zeros(2, 5, dtype=torch.long, device=DEVICE), torch.zeros(2, 10, dtype=torch.long, device=DEVICE)
    return {
        "select seed tensor": lambda: ops.select_tokens(0, seed32, 2, 10, 5, DEVICE, False, True, None, None),
        "select_gather seed tensor": lambda: ops.select_gather_tokens(x, 0, seed32, 5, 1, False, None, None),
        "cell mask seed tensor": lambda: ops.grid_cell_mask(0, seed32, 2, 4, 2, DEVICE),
        "scatter int64 inv": lambda: ops.scatter_tokens(x[:, :6], ids, inv64, 1, 10),
        "gather int64 inv": lambda: ops.gather_tokens(x, ids, inv64, 1),
    }


@pytest.mark.parametrize("call", sorted(_direct_type_errors()))
def test_the_internal_ops_refuse_operands_of_another_dtype_on_every_backend(backend, call):
    with mk.use_backend(backend), pytest.raises(TypeError, match=r"must (hold one int64|be int32)"):
        _direct_type_errors()[call]()


def test_gather_refuses_the_empty_no_inverse_map_at_the_call(backend):
    # helper-207: select_tokens' [0, N] "no inverse" passed to gather_tokens was refused only in the backward
    x, ids = torch.zeros(2, 7, 4, device=DEVICE), torch.zeros(2, 3, dtype=torch.long, device=DEVICE)
    empty = torch.zeros(0, 6, dtype=torch.int32, device=DEVICE)
    with mk.use_backend(backend), pytest.raises(ValueError, match=r"inv must be None or \[batch=2, num_tokens=6\]"):
        torch.ops.masksub.gather_tokens(x, ids, empty, 1)

"""The internal ops' own checks (MaskSubOp's ``check``: ops/_grid_checks.py, ops/_token_select_checks.py and the
check= functions of grid_mask.py and token_grid_mask.py), for direct ``torch.ops.masksub`` calls and the ops' Python
objects: every backend refuses what the public functions would, before any backend runs, on every route a call can
take (the plain call, the eager autograd path, the meta device's fake). From helper-209's mutation audit; the
refusals of test_op_inputs.py come first."""

import types

import pytest
import torch
from conftest import DEVICE


def _seed_tensor_calls(seed_tensor):
    # the ops' MaskSubOp objects, which torch.ops.masksub.* runs in eager mode (through the dispatcher an operand on
    # the meta device would send the call to the registered fake instead: its own test below)
    from masksub_kernels.ops import grid_mask, token_grid_mask, token_select

    ops = {"select_tokens": token_select._select_op, "select_gather_tokens": token_select._select_gather_op,
           "grid_cell_mask": grid_mask._cell_mask_op, "mask_image_grid_random": grid_mask._mask_image_random_op,
           "mask_tokens_grid_random": token_grid_mask._mask_tokens_random_op}  # fmt: skip
    ops = types.SimpleNamespace(**ops)
    x, images = (
        torch.zeros(2, 11, 4, device=DEVICE),
        torch.zeros(2, 3, 64, 64, device=DEVICE),
    )
    tokens, token = (
        torch.zeros(2, 16, 16, 6, device=DEVICE),
        torch.zeros(6, device=DEVICE),
    )
    return {
        "select": lambda: ops.select_tokens(0, seed_tensor, 2, 10, 5, DEVICE, False, True, None, None),
        "select_gather": lambda: ops.select_gather_tokens(x, 0, seed_tensor, 5, 1, False, None, None),
        "cell mask": lambda: ops.grid_cell_mask(0, seed_tensor, 2, 4, 2, DEVICE),
        "image random": lambda: ops.mask_image_grid_random(images, 0, seed_tensor, 32, 2, 0.0),
        "tokens random": lambda: ops.mask_tokens_grid_random(tokens, token, 0, seed_tensor, 8, 2),
    }


@pytest.mark.parametrize("call", sorted(_seed_tensor_calls(None)))
def test_every_random_op_refuses_a_bad_seed_tensor_on_every_backend(backend, call):
    # helper-207 had the selection ops' and the cell mask op's checks take the seed tensor; the random image and token
    # ops' checks must too (an int32 seed ran on torch and Triton, the cuda binding refused it; a seed tensor on
    # another device failed inside each backend in its own way). The meta device stands in for another device here.
    with pytest.raises(TypeError, match="must hold one int64"):
        _seed_tensor_calls(torch.zeros(1, dtype=torch.int32, device=DEVICE))[call]()
    with pytest.raises(TypeError, match="must hold one int64"):
        _seed_tensor_calls(torch.zeros(2, dtype=torch.int64, device=DEVICE))[call]()
    with pytest.raises(ValueError, match="the seed tensor must be on the op's device"):
        _seed_tensor_calls(torch.zeros(1, dtype=torch.int64, device="meta"))[call]()


def _more_direct_calls():
    from masksub_kernels.ops import token_select

    ops, seed, meta = torch.ops.masksub, 2**40 + 3, torch.device("meta")
    gather, scatter = (
        token_select._gather_op,
        token_select._scatter_op,
    )  # the MaskSubOp objects: the operands on meta reach their check (the fake's is tested below)
    x, images = (
        torch.zeros(2, 11, 4, device=DEVICE),
        torch.zeros(2, 3, 64, 64, device=DEVICE),
    )
    ids, short = (
        torch.zeros(2, 5, dtype=torch.long, device=DEVICE),
        torch.zeros(2, 9, dtype=torch.bool, device=DEVICE),
    )
    inv_elsewhere = torch.zeros(2, 10, dtype=torch.int32, device=meta)
    return {
        "image random no kept cell": (lambda: ops.mask_image_grid_random(images, seed, None, 32, 0, 0.0),
                                      ValueError, r"num_keep must be in \[1, num_cells=4\], got 0"),
        "tokens random no kept cell": (lambda: ops.mask_tokens_grid_random(torch.zeros(2, 16, 16, 6, device=DEVICE),
                                                                           torch.zeros(6, device=DEVICE), seed, None,
                                                                           8, 0),
                                       ValueError, r"num_keep must be in \[1, num_cells=4\], got 0"),
        "gather negative prefix": (lambda: ops.gather_tokens(x, ids, None, -1), ValueError,
                                   "num_prefix_tokens must be in"),
        "scatter negative prefix": (lambda: ops.scatter_tokens(x[:, :6], ids[:, :1].expand(2, 7), None, -1, 10),
                                    ValueError, "num_prefix_tokens must be in"),
        "scatter more kept than tokens": (lambda: ops.scatter_tokens(x[:, :6], ids, None, 1, 4), ValueError,
                                          r"ids must be \[batch=2, K=5\] with K <= num_tokens=4"),
        "select drop_first": (lambda: ops.select_tokens(seed, None, 2, 10, 5, DEVICE, False, True, None, short),
                              ValueError, "drop_first must be"),
        "gather inv elsewhere": (lambda: gather(x, ids, inv_elsewhere, 1), ValueError,
                                 r"inv must be None or \[batch=2, num_tokens=10\] on"),
        "scatter inv elsewhere": (lambda: scatter(x[:, :6], ids, inv_elsewhere, 1, 10), ValueError,
                                  r"inv must be None or \[batch=2, num_tokens=10\] on"),
        # helper-342's mutation audit of ops/_token_select_checks.py:134 (ids' batch unchecked): ids of one row
        "scatter ids of another batch": (lambda: ops.scatter_tokens(x[:, :6], ids[:1], None, 1, 10), ValueError,
                                         r"ids must be \[batch=2, K=5\] with K <= num_tokens=10, got \(1, 5\)"),
        "scatter float ids": (lambda: ops.scatter_tokens(x[:, :6], ids.float(), None, 1, 10), TypeError,
                              r"ids must be int64 \(or int32\)"),
        "scatter ids elsewhere": (lambda: scatter(x[:, :6], ids.to(meta), None, 1, 10), ValueError,
                                  "ids must be on the device of grad_y"),
    }  # fmt: skip


@pytest.mark.parametrize("call", sorted(_more_direct_calls()))
def test_the_internal_ops_refuse_what_their_public_functions_would_on_every_backend(backend, call):
    # helper-209: each of these passed the op's own check under one mutant and then ran (torch: the scatter and the
    # gather ignore inv; a negative prefix read rows before the sequence; no kept cell drew an all-removed mask) or
    # failed inside a backend with its own error
    op, error, match = _more_direct_calls()[call]
    with pytest.raises(error, match=match):
        op()


def test_the_selection_op_checks_its_sizes_for_the_meta_device_too(backend):
    # no tensor operand: the dispatcher runs the op's implementation (MaskSubOp.run), whose check must come before
    # the fake that answers for the meta device (the public functions refuse these sizes on meta too)
    with pytest.raises(ValueError, match=r"num_keep must be in \[1, num_tokens=10\], got 11"):
        torch.ops.masksub.select_tokens(1, None, 2, 10, 11, torch.device("meta"), False, True, None, None)
    with pytest.raises(ValueError, match=r"num_keep must be in \[1, num_cells=4\], got 5"):
        torch.ops.masksub.grid_cell_mask(1, None, 2, 4, 5, torch.device("meta"))


def test_the_op_checks_run_on_the_eager_autograd_path_too(backend):
    # the ops' Python objects (what the public functions and the backwards call) take an autograd.Function when an
    # input requires grad: their check must run there as on the plain path
    from masksub_kernels.ops import token_select

    x = torch.zeros(2, 11, 4, device=DEVICE, requires_grad=True)
    too_wide = torch.zeros(2, 11, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"ids must be \[batch=2, K\] with 1 <= K <= 10"):
        token_select._gather_op(x, too_wide, None, 1)
    with pytest.raises(ValueError, match="num_keep"):
        token_select._select_gather_op(x, 1, None, 11, 1, False, None, None)


def test_a_direct_call_with_a_meta_operand_is_checked_too():
    # through the dispatcher an operand on the meta device sends the whole call to the registered fake, not to
    # MaskSubOp.run: the fake runs the same check first (helper-209's F1: shapes came back for 11 of 10 tokens kept,
    # a grid not divisible by its cells, an inverse map on another device)
    ops, meta = torch.ops.masksub, torch.device("meta")
    with pytest.raises(ValueError, match=r"num_keep must be in \[1, num_tokens=10\], got 11"):
        ops.select_gather_tokens(torch.empty(2, 11, 4, device=meta), 1, None, 11, 1, False, None, None)
    with pytest.raises(ValueError, match="not divisible by cell_size=24"):
        ops.mask_image_grid_random(torch.empty(2, 3, 64, 64, device=meta), 1, None, 24, 1, 0.0)
    x, ids = torch.zeros(2, 11, 4, device=DEVICE), torch.zeros(2, 5, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"inv must be None or \[batch=2, num_tokens=10\] on"):
        ops.gather_tokens(x, ids, torch.zeros(2, 10, dtype=torch.int32, device=meta), 1)
    # a legitimate meta call still answers with the op's shapes
    y, kept, inv = ops.select_gather_tokens(torch.empty(2, 11, 4, device=meta), 1, None, 5, 1, False, None, None)
    assert (y.shape, kept.shape, inv.shape) == ((2, 6, 4), (2, 5), (2, 10))


def test_the_token_ops_take_a_mask_token_of_c_elements_only(backend):
    # the public functions reshape a [1, ..., 1, C] mask token to [C]; the ops' backward returns a [C] gradient, so a
    # direct call with [1, 1, C] ran forward and then failed in autograd ("invalid gradient ... got [3]"): refused
    # up front (helper-209's F2)
    tokens = torch.randn(1, 4, 4, 3, device=DEVICE)
    token = torch.randn(1, 1, 3, device=DEVICE, requires_grad=True)
    cells = torch.tensor([[[True, False], [False, True]]], device=DEVICE)
    with pytest.raises(ValueError, match=r"the op's mask_token must be \[C=3\], got \(1, 1, 3\)"):
        torch.ops.masksub.mask_tokens_grid(tokens, token, cells, 2)
    with pytest.raises(ValueError, match=r"the op's mask_token must be \[C=3\], got \(1, 1, 3\)"):
        torch.ops.masksub.mask_tokens_grid_random(tokens, token, 1, None, 2, 2)


def test_the_token_ops_refuse_integer_tokens_on_every_backend(backend):
    # the token ops' own check takes the tokens' dtype too (helper-209's TG6, dropping it: int32 tokens reached the
    # backends, which failed each in its own way or masked them)
    tokens, token = torch.zeros(1, 4, 4, 3, dtype=torch.int32, device=DEVICE), torch.zeros(3, dtype=torch.int32)
    cells = torch.tensor([[[True, False], [False, True]]], device=DEVICE)
    with pytest.raises(TypeError, match="tokens must be float32, float16, bfloat16 or float64"):
        torch.ops.masksub.mask_tokens_grid(tokens, token.to(DEVICE), cells, 2)
    with pytest.raises(TypeError, match="tokens must be float32, float16, bfloat16 or float64"):
        torch.ops.masksub.mask_tokens_grid_random(tokens, token.to(DEVICE), 1, None, 2, 2)
    with pytest.raises(TypeError, match="grad_out must be float32, float16, bfloat16 or float64"):
        torch.ops.masksub.mask_tokens_grid_backward(tokens, cells, 2, True, True)


def test_a_direct_call_of_a_given_mask_op_with_meta_operands_checks_its_cell_mask():
    # the given-mask ops check their cell mask in their own check (helper-211: it was in each backend, so the meta
    # device's fake answered a mask of another batch or a height off the cells with shapes)
    ops, meta = torch.ops.masksub, torch.device("meta")
    images, tokens = torch.empty(2, 3, 64, 64, device=meta), torch.empty(2, 16, 16, 4, device=meta)
    one = torch.zeros(1, 2, 2, dtype=torch.bool, device=meta)  # a mask of another batch
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        ops.mask_image_grid(images, one, 32, 0.0)
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        ops.mask_tokens_grid(tokens, torch.zeros(4, device=meta), one, 8)
    with pytest.raises(ValueError, match=r"cell_mask must have shape \[2, 2, 2\], got \[1, 2, 2\]"):
        ops.mask_tokens_grid_backward(tokens, one, 8, True, True)
    with pytest.raises(ValueError, match="not divisible by cell_size=32"):  # a height off the cells
        ops.mask_image_grid(torch.empty(2, 3, 80, 64, device=meta), one.expand(2, 2, 2), 32, 0.0)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.zeros(2, 3, 64, 64, dtype=torch.int32), TypeError, "images must be float32, float16, bfloat16"),
        (torch.zeros(3, 64, 64), ValueError, r"images must be \[B, C, H, W\] \(4-D\), got shape \(3, 64, 64\)"),
    ],
)
def test_the_image_ops_refuse_images_that_are_not_4d_float_on_every_backend(backend, images, error, match):
    # helper-342's mutation audit of _grid_checks.py:111 (_image_op_sizes without check_float_tensor): a direct
    # torch.ops.masksub call with int32 images failed in torch.finfo, 3-D ones in an unpacking of their shape
    ops, images = torch.ops.masksub, images.to(DEVICE)
    cells = torch.ones(2, 2, 2, dtype=torch.bool, device=DEVICE)
    with pytest.raises(error, match=match):
        ops.mask_image_grid(images, cells, 32, 0.0)
    with pytest.raises(error, match=match):
        ops.mask_image_grid_random(images, 1, None, 32, 2, 0.0)

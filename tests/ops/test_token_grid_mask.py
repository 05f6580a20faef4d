"""mask_tokens_grid: every backend against the reference, bit for bit (d mask_token within its fp32 bound)."""

import pytest
import torch
from _guards import guard
from conftest import DEVICE, kernel_backends
from test_grid_mask import DTYPES, bits, randn

import masksub_kernels as mk
from masksub_kernels.ops import grid_mask as gm
from masksub_kernels.ops import token_grid_mask as tgm


def mask_token_grad_float64(grad, mask, cell_size):
    removed = gm.pixel_mask_reference(mask.cpu(), cell_size)[..., None]
    return torch.where(removed, grad.cpu().double(), 0).sum(dim=(0, 1, 2))


def assert_mask_token_grad_close(actual, grad, mask, cell_size):
    # fp32 accumulation (fp64 for fp64) of n terms in another order than float64's: |error| <= n * eps * max|term|
    # (the classic bound), then one rounding to the dtype (rtol eps)
    expected = mask_token_grad_float64(grad, mask, cell_size)
    terms = int(mask.sum()) * cell_size * cell_size
    acc_eps = torch.finfo(torch.float64 if actual.dtype == torch.float64 else torch.float32).eps
    atol = acc_eps * terms * float(grad.abs().max())
    torch.testing.assert_close(actual.detach().cpu().double(), expected, rtol=torch.finfo(actual.dtype).eps, atol=atol)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
def test_mask_tokens_matches_reference(backend, dtype):
    tokens = randn(2, 16, 24, 40, dtype=dtype).requires_grad_(True)
    mask_token = randn(40, dtype=dtype, seed=5).requires_grad_(True)
    out, mask = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=9)
    assert mask.shape == (2, 2, 3) and torch.equal(mask, mk.random_grid_mask(2, (2, 3), 3, seed=9, device=DEVICE))
    assert out.dtype == dtype and out.is_contiguous()
    expected = tgm.mask_tokens_reference(tokens.detach().cpu(), mask_token.detach().cpu(), mask.cpu(), 8)
    assert torch.equal(bits(out), bits(expected))
    grad = randn(*out.shape, dtype=dtype, seed=1)
    out.backward(grad)
    grad_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), mask.cpu(), 8)
    assert torch.equal(bits(tokens.grad), bits(grad_tokens))
    assert mask_token.grad.dtype == dtype
    assert_mask_token_grad_close(mask_token.grad, grad, mask, 8)


def test_mask_tokens_semantics(backend):
    tokens = randn(3, 16, 16, 12)
    mask_token = randn(1, 1, 12, seed=2).requires_grad_(True)  # timm-style [1, 1, C] parameter
    out, mask = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=4)
    assert mask.view(3, -1).sum(dim=1).tolist() == [4 - 2] * 3
    removed = gm.pixel_mask_reference(mask.cpu(), 8).to(DEVICE)
    assert torch.equal(out[removed], mask_token.detach().view(1, 12).expand(int(removed.sum()), 12))
    assert torch.equal(out[~removed], tokens[~removed])
    out.sum().backward()  # an expanded (stride 0) grad_output
    assert mask_token.grad.shape == (1, 1, 12)
    # torch.equal refuses tensors on two devices: the expected gradient on DEVICE, as mask_token.grad
    assert torch.equal(mask_token.grad.view(12), torch.full((12,), float(removed.sum()), device=DEVICE))


def test_mask_tokens_identity_at_ratio_zero(backend):
    tokens = randn(2, 8, 16, 10, dtype=torch.bfloat16)
    out, mask = mk.mask_tokens_grid(tokens, torch.zeros(10, dtype=torch.bfloat16, device=DEVICE), 0.0, seed=0)
    assert not bool(mask.any()) and torch.equal(bits(out), bits(tokens))


@pytest.mark.parametrize("which", ["tokens", "mask_token"])
def test_mask_tokens_one_input_needs_grad(backend, which):
    tokens = randn(2, 16, 8, 24).requires_grad_(which == "tokens")
    mask_token = randn(24, seed=3).requires_grad_(which == "mask_token")
    out, mask = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=6)
    grad = randn(*out.shape, seed=7)
    out.backward(grad)
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), mask.cpu(), 8)
    if which == "tokens":
        assert mask_token.grad is None and torch.equal(bits(tokens.grad), bits(expected_tokens))
    else:
        assert tokens.grad is None
        assert_mask_token_grad_close(mask_token.grad, grad, mask, 8)


def test_mask_tokens_strided_layouts(backend):
    base = randn(2, 16, 24, 48)
    mask_token = randn(40, seed=1)
    for tokens in (base[..., :40], base[..., :40].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)):
        out, mask = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=3)
        assert torch.equal(bits(out), bits(tgm.mask_tokens_reference(tokens.cpu(), mask_token.cpu(), mask.cpu(), 8)))


def test_mask_token_grad_partial_reduction(kernel_backend):
    # 48 lines (b, h): one per program (48 partials: a padded 64-row tile in the second stage), 7 per program with
    # a ragged last one, or all in one program; then the fixed-order second stage
    if kernel_backend != "triton":
        pytest.skip("exercises the Triton launcher")
    mask = mk.random_grid_mask(3, (2, 3), 3, seed=1, device=DEVICE)
    grad = randn(3, 16, 24, 40, seed=2)
    for max_partials in (1024, 7, 1):
        grad_tokens, grad_mask = tgm._mask_tokens_backward_triton(grad, mask, 8, True, True, max_partials)
        assert torch.equal(grad_tokens.cpu(), tgm.mask_tokens_backward_reference(grad.cpu(), mask.cpu(), 8)[0])
        assert_mask_token_grad_close(grad_mask, grad, mask, 8)
        again = tgm._mask_tokens_backward_triton(grad, mask, 8, False, True, max_partials)[1]
        assert torch.equal(bits(again), bits(grad_mask))  # same bits with or without writing dT


def test_mask_token_grad_deterministic(backend):
    tokens = randn(2, 16, 16, 32, dtype=torch.bfloat16)
    grads = []
    for _ in range(2):
        mask_token = torch.zeros(32, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
        out, _ = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=5)
        out.backward(randn(*out.shape, dtype=torch.bfloat16, seed=3))
        grads.append(bits(mask_token.grad))
    assert torch.equal(grads[0], grads[1])


def test_mask_tokens_published_cell_counts():
    # Swin at 224 px: 56 x 56 tokens, 8 x 8-token cells -> 49 cells, 25 replaced; 224 x 160 -> 7 x 5 cells
    with mk.use_backend("torch"):
        _, mask = mk.mask_tokens_grid(torch.zeros(4, 56, 56, 3), torch.zeros(3), 0.5, seed=0)
        _, wide = mk.mask_tokens_grid(torch.zeros(4, 56, 40, 3), torch.zeros(3), 0.5, seed=0)
    assert mask.view(4, -1).sum(dim=1).tolist() == [25] * 4
    assert wide.shape == (4, 7, 5) and wide.view(4, -1).sum(dim=1).tolist() == [35 - 17] * 4


@pytest.mark.parametrize(
    ("tokens", "mask_token", "kwargs", "error", "match"),
    [
        (torch.zeros(2, 64, 8), torch.zeros(8), {}, ValueError, "4-D"),
        (torch.zeros(2, 16, 16, 8), torch.zeros(7), {}, ValueError, r"\[C=8\]"),
        (torch.zeros(2, 16, 16, 8), torch.zeros(2, 8), {}, ValueError, r"\[C=8\]"),
        (torch.zeros(2, 16, 16, 8), torch.zeros(2, 4), {}, ValueError, r"\[C=8\]"),  # C elements, not [C]
        (torch.zeros(2, 16, 16, 1), torch.zeros(()), {}, ValueError, r"\[C=1\]"),
        (torch.zeros(2, 8, 16, 16), torch.zeros(8), {}, ValueError, "B, H, W, C"),  # NCHW by mistake
        (torch.zeros(2, 16, 16, 8), torch.zeros(8, dtype=torch.float16), {}, TypeError, "dtype of tokens"),
        (torch.zeros(2, 16, 16, 8), torch.zeros(8, device="meta"), {}, ValueError, "device"),
        (torch.zeros(2, 16, 16, 8), [0.0] * 8, {}, TypeError, "mask_token"),
        (torch.zeros(2, 16, 12, 8), torch.zeros(8), {}, ValueError, "not divisible by cell_size=8"),
        (torch.zeros(2, 16, 16, 8), torch.zeros(8), {"mask_ratio": 1.0}, ValueError, r"\[0, 1\)"),
        (torch.zeros(2, 16, 16, 8, dtype=torch.int32), torch.zeros(8), {}, TypeError, "float32"),
    ],
)
def test_mask_tokens_bad_input(tokens, mask_token, kwargs, error, match):
    with pytest.raises(error, match=match):
        mk.mask_tokens_grid(tokens, mask_token, **kwargs)


@pytest.mark.parametrize(("width", "channels"), [(8, 2**28), (1, 65535 * 256 + 1)])
def test_mask_tokens_refuse_rows_past_int_on_every_backend(backend, width, channels):
    # [1, 8, 8, 2**28]: 8 rows of 2**31 elements; [1, 1, 1, 65535 x 256 + 1]: one row past a GPU grid's 65535 blocks of
    # 256 channels (helper-205: the cuda backward's launch failed, "invalid argument", where torch ran); as zero-stride
    # views (no memory, refused before any launch)
    height = 8 if width == 8 else 1
    tokens = torch.zeros(1, device=DEVICE).expand(1, height, width, channels)
    mask_token = torch.zeros(1, device=DEVICE).expand(channels)
    rows = f"got {height} rows of {width * channels}, a height of {height}"
    with mk.use_backend(backend), pytest.raises(ValueError, match=f"tokens must have at most .* {rows}"):
        mk.mask_tokens_grid(tokens, mask_token, cell_size=1 if width == 1 else 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_backend_backward_by_rows_equals_the_reference(dtype):
    # The torch backend's backward (index_fill / index_select of whole rows on CPU tensors) against the reference:
    # dT bit for bit (+0.0 on removed tokens, a kept -0.0, NaN and inf kept as they are), dm within its fp32 bound
    # (a kept token's NaN never reaches it); contiguous and strided gradients; each gradient alone.
    mask = mk.random_grid_mask(3, (2, 3), 3, seed=4)
    removed = gm.pixel_mask_reference(mask, 8)
    kept = (~removed).nonzero()
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(3, 16, 24, 40, generator=gen).to(dtype)
    for grad in (base[..., :20].contiguous(), base[..., ::2], base.transpose(1, 2).contiguous().transpose(1, 2)):
        grad = grad.clone() if grad.is_contiguous() else grad
        for (b, h, w), value in zip(kept[:3].tolist(), (float("nan"), float("inf"), -0.0)):
            grad[b, h, w, 1] = value
        expected_tokens, _ = tgm.mask_tokens_backward_reference(grad, mask, 8)
        grad_tokens, grad_mask = tgm._mask_tokens_backward_torch(grad, mask, 8, True, True)
        assert grad_tokens.is_contiguous() and torch.equal(bits(grad_tokens), bits(expected_tokens))
        assert bool(torch.isfinite(grad_mask).all())
        assert_mask_token_grad_close(grad_mask, torch.where(removed[..., None], grad, 0), mask, 8)
        alone = tgm._mask_tokens_backward_torch(grad, mask, 8, False, True)
        assert alone[0].numel() == 0 and torch.equal(bits(alone[1]), bits(grad_mask))
        assert tgm._mask_tokens_backward_torch(grad, mask, 8, True, False)[1].numel() == 0
    empty = tgm._mask_tokens_backward_torch(base[..., :0], mask, 8, True, True)  # C = 0
    assert all(torch.equal(a, e) for a, e in zip(empty, tgm.mask_tokens_backward_reference(base[..., :0], mask, 8)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_backend_forward_by_rows_equals_the_reference(dtype):
    # index_put_ of the mask token over the rows of removed cells, bit for bit the reference's select: a removed
    # token's NaN never leaks, strided tokens are read in place, the input is never written.
    mask = mk.random_grid_mask(3, (2, 3), 3, seed=5)
    removed = gm.pixel_mask_reference(mask, 8)
    base = torch.randn(3, 16, 24, 40, generator=torch.Generator().manual_seed(2)).to(dtype)
    base[:, :, :, :20][removed] = float("nan")
    mask_token = torch.randn(20).to(dtype)
    transposed = base[..., :20].transpose(1, 2).contiguous().transpose(1, 2)
    for tokens in (base[..., :20].contiguous(), base[..., ::2], transposed):
        before = tokens.clone()
        out = tgm._mask_tokens_forward_torch(tokens, mask_token, mask, 8)
        assert out.is_contiguous() and not bool(out[removed].isnan().any())
        assert torch.equal(bits(out), bits(tgm.mask_tokens_reference(tokens, mask_token, mask, 8)))
        assert torch.equal(bits(tokens), bits(before))
    empty = tgm._mask_tokens_forward_torch(base[..., :0], mask_token[:0], mask, 8)  # C = 0
    assert torch.equal(empty, tgm.mask_tokens_reference(base[..., :0], mask_token[:0], mask, 8))


def test_empty_batch_backward(backend):
    # token_grid_mask.py:275 `grad_out.numel() == 0 or`: B = 0 (0 lines) must not reach cdiv(0, 0)
    tokens = torch.randn(0, 16, 16, 8, device=DEVICE, requires_grad=True)
    mask_token = torch.zeros(8, device=DEVICE, requires_grad=True)
    out, _ = mk.mask_tokens_grid(tokens, mask_token, 0.5, seed=1)
    out.sum().backward()
    assert tokens.grad.shape == tokens.shape
    assert torch.equal(mask_token.grad.cpu(), torch.zeros(8))


def test_backward_launches_at_most_max_partials_programs(monkeypatch):
    # token_grid_mask.py:278 `cdiv(n_lines, max_partials)`: a floor instead would launch more than max_partials
    # programs (same values: the bound itself is what the docstring promises and nothing else observes)
    from masksub_kernels.ops import token_grid_mask as tgm

    if "triton" not in kernel_backends():
        pytest.skip("the Triton backward's launch: Triton cannot run here")
    kernel, grids = tgm._mask_tokens_backward_kernel, []

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(tgm, "_mask_tokens_backward_kernel", Spy())
    mask = mk.random_grid_mask(3, (2, 3), 3, seed=1, device=DEVICE)
    grad = torch.randn(3, 16, 24, 8, device=DEVICE)  # 48 lines (b, h)
    for max_partials in (7, 5):
        tgm._mask_tokens_backward_triton(grad, mask, 8, False, True, max_partials)
        assert grids[-1][0] <= max_partials


# helper-180's mutation audit: the Triton kernels write (and read) nothing past their buffers


@pytest.mark.triton
@pytest.mark.skipif("triton" not in mk.available_backends(), reason="no Triton backend")
def test_token_grid_mask_forward_kernel_writes_nothing_past_the_output(monkeypatch):
    # kills token_grid_mask.py:152 `w_ok = w < W` -> `w <= W` and :153 `col_ok = cols < C` -> `cols <= C`: the
    # last line's lane w = W (or its last token's lane c = C) stores one token (one element) past the output
    B, H, W, C = 2, 8, 24, 40
    assert gm._tile(C, W)[0] > W and gm._tile(C, W)[1] > C  # lanes w = W and c = C exist
    tokens = randn(B + 1, H, W, C)[:B]  # reads past the tokens (mutants only) stay inside the buffer
    cells = torch.zeros(B + 1, 1, 3, dtype=torch.bool, device=DEVICE)
    cells[0, 0, 1] = cells[1, 0, 2] = True
    cell_mask = cells[:B]
    mask_token = randn(C, seed=1)
    out_buffer = torch.full((B * H * W * C + 64,), -7.0, device=DEVICE)
    out = out_buffer[: B * H * W * C].view(B, H, W, C)
    guarded = guard(monkeypatch, tgm, [out])
    result = tgm._mask_tokens_forward_triton(tokens, mask_token, cell_mask, 8)
    assert result is out
    assert torch.equal(out.cpu(), tgm.mask_tokens_reference(tokens.cpu(), mask_token.cpu(), cell_mask.cpu(), 8))
    assert torch.equal(out_buffer[B * H * W * C :].cpu(), torch.full((64,), -7.0))
    assert not guarded.unused()  # every guarded view was the launcher's


@pytest.mark.triton
@pytest.mark.skipif("triton" not in mk.available_backends(), reason="no Triton backend")
def test_token_grid_mask_backward_kernels_write_and_read_nothing_past_their_buffers(monkeypatch):
    # kills (token_grid_mask.py) :196 `(w < W) & (line < n_lines)` -> `(w < W)` (the ragged last program's extra
    # line writes dT past the output and adds a sample past the batch to dm), :209 partial store `mask=col_ok` ->
    # `cols <= C` (one partial past the buffer), :225 `parts < P` -> `parts <= P` (the row past the partials is
    # added to dm) and :227 `mask=cols < C` -> `cols <= C` (dm[C] written past d mask_token)
    B, H, W, C = 3, 8, 24, 40
    max_partials = 5  # 24 lines, 5 per program: 5 programs, the last with one line past the batch
    programs = 5
    grad = randn(B + 1, H, W, C, seed=3)
    grad[B] = 1000.0  # a sample past the batch: must never be read
    grad = grad[:B]
    cells = torch.zeros(B + 1, 1, 3, dtype=torch.bool, device=DEVICE)
    cells[0, 0, 0] = cells[1, 0, 2] = cells[2, 0, 1] = True
    cells[B] = True
    cell_mask = cells[:B]
    grad_tokens_buffer = torch.full((B + 1, H, W, C), -7.0, device=DEVICE)
    partials_buffer = torch.full((programs + 1, C), 1.0e6, device=DEVICE)
    grad_mask_buffer = torch.full((C + 1,), -7.0, device=DEVICE)
    views = [grad_tokens_buffer[:B], partials_buffer[:programs], grad_mask_buffer[:C]]
    guarded = guard(monkeypatch, tgm, views)
    grad_tokens, grad_mask = tgm._mask_tokens_backward_triton(grad, cell_mask, 8, True, True, max_partials)
    assert grad_tokens is views[0] and grad_mask is views[2]
    expected_tokens, _ = tgm.mask_tokens_backward_reference(grad.cpu(), cell_mask.cpu(), 8)
    assert torch.equal(grad_tokens.cpu(), expected_tokens)
    removed = gm.pixel_mask_reference(cell_mask.cpu(), 8)[..., None]
    expected_mask = torch.where(removed, grad.cpu().double(), 0).sum(dim=(0, 1, 2))
    torch.testing.assert_close(grad_mask.cpu().double(), expected_mask, rtol=1e-5, atol=1e-4)
    assert torch.equal(grad_tokens_buffer[B].cpu(), torch.full((H, W, C), -7.0))
    assert torch.equal(partials_buffer[programs].cpu(), torch.full((C,), 1.0e6))
    assert float(grad_mask_buffer[C]) == -7.0
    assert not guarded.unused()  # every guarded view was the launcher's

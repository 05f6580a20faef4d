"""autograd beyond one backward, the same on every backend: gradients taken with create_graph=True are either
differentiable again (the token and grid ops: their backwards are differentiable ops) or refused (the losses, whose
backwards are kernels: an error, never a silent zero); per-row losses that the caller changes in place."""

import numpy as np
import pytest
import torch
from conftest import DEVICE, kernel_backends

import masksub_kernels as mk

DOUBLE_BACKWARD = "double backward is not supported"
LINEAR_BACKENDS = ["torch", *(name for name in kernel_backends() if name != "cuda")]  # no CUDA version of it
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")  # interpreter


def _logits(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * 2).to(DEVICE).requires_grad_()


def _losses():
    """(the public function, function of (z, s) -> a tensor) for each loss, class ids with an ignored row."""
    y = torch.tensor([1, 3, -100, 0], device=DEVICE)
    probs = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(3)), 1).to(DEVICE)
    return [
        ("masksub_loss", lambda z, s: mk.masksub_loss(z, s, y, temperature=2.0).loss),
        ("masksub_loss", lambda z, s: mk.masksub_loss(z, s, probs, mode="bce", reduction="none").loss.sum()),
        ("soft_target_cross_entropy", lambda z, s: (mk.soft_target_cross_entropy(z, y, reduction="none") ** 2).sum()),
        ("soft_target_bce", lambda z, s: mk.soft_target_bce(z, probs)),
        ("self_distillation_loss", lambda z, s: mk.self_distillation_loss(s, z, reduction="sum")),
        ("soft_target_cross_entropy", lambda z, s: mk.soft_target_cross_entropy(z, y)),
        ("soft_target_bce", lambda z, s: mk.soft_target_bce(z, y, reduction="none").sum()),
        ("self_distillation_loss", lambda z, s: mk.self_distillation_loss(s, z, mode="bce", reduction="none").sum()),
    ]


def _named(function: str, op: str = r"masksub_loss_(reduced|forward)") -> str:
    """The refusal's start: the public function the user called (not the first one its shared op serves: helper-160
    and helper-294, masksub_loss_reduced on one backend, masksub_loss for soft_target_cross_entropy), and the op."""
    return rf"^{function} \(op masksub::{op}\): {DOUBLE_BACKWARD}"


@pytest.mark.parametrize("case", range(8))
def test_loss_backward_with_create_graph_is_refused(backend, case):
    # its gradient would be a constant: an hvp, a gradient penalty or a jvp through it would silently be zero
    name, loss_of = _losses()[case]
    z, s = _logits(4, 7), _logits(4, 7, seed=1)
    u = torch.randn(4, 7, device=DEVICE)
    with pytest.raises(RuntimeError, match=_named(name)):
        torch.autograd.grad(loss_of(z, s), (z, s), create_graph=True, allow_unused=True)
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD):
        torch.autograd.functional.hvp(loss_of, (z.detach(), s.detach()), (u, u))
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD):
        loss_of(z, s).backward(create_graph=True, inputs=[z, s])
    plain = torch.autograd.grad(loss_of(z, s), (z, s), allow_unused=True)  # first order: unchanged
    assert any(g is not None and g.abs().sum() > 0 for g in plain), name


@pytest.mark.parametrize("name", LINEAR_BACKENDS)
def test_fused_linear_loss_refuses_a_second_backward(name):
    h, hs = _logits(4, 5), _logits(4, 5, seed=1)
    w, y = _logits(7, 5, seed=2), torch.tensor([1, 3, -100, 0], device=DEVICE)
    op = "linear_masksub_loss_(grads|forward)"
    for reduction in ("mean", "none"):
        with mk.use_backend(name):
            loss = mk.linear_masksub_loss(h, hs, w, None, y, reduction=reduction).loss.sum()
            with pytest.raises(RuntimeError, match=_named("linear_masksub_loss", op)):
                torch.autograd.grad(loss, (h, w), create_graph=True)
            loss = mk.linear_soft_target_cross_entropy(h, w, None, y, reduction=reduction).sum()
            with pytest.raises(RuntimeError, match=_named("linear_soft_target_cross_entropy", op)):
                torch.autograd.grad(loss, (h, w), create_graph=True)


def _jvp_by_double_backward(op, x):
    """(d/dv <(dy/dx)^T v, u>, u) for random v, u: the vector-Jacobian product differentiated in v, which is the
    Jacobian times u; for an op linear in x, y = A x + c, that is A u."""
    y = op(x)
    v = torch.randn_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)
    u = torch.randn_like(g)
    (jvp,) = torch.autograd.grad(g, v, u)
    return jvp, u


@pytest.mark.parametrize("op", ["gather_tokens", "random_token_select", "mask_tokens_grid", "mask_image_grid"])
def test_token_and_grid_op_gradients_are_differentiable_again(backend, op):
    # Each op is linear in x (plus a constant: the mask token), so the double backward's jvp is the op on u with the
    # constant zeroed: an oracle that does not run the op's backward.
    ids = torch.tensor([[3, 0, 5], [1, 2, 4]], device=DEVICE)
    mask_token = torch.randn(6, device=DEVICE, requires_grad=True)
    ops = {
        "gather_tokens": ((2, 7, 6), lambda x, token: mk.gather_tokens(x, ids)),
        "random_token_select": ((2, 9, 6), lambda x, token: mk.random_token_select(x, 0.5, seed=4)[0]),
        "mask_tokens_grid": ((2, 4, 4, 6), lambda x, token: mk.mask_tokens_grid(x, token, cell_size=2, seed=4)[0]),
        "mask_image_grid": ((2, 3, 8, 8), lambda x, token: mk.mask_image_grid(x, cell_size=4, seed=4)[0]),
    }
    shape, function = ops[op]
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    jvp, u = _jvp_by_double_backward(lambda t: function(t, mask_token), x)
    with torch.no_grad():
        expected = function(u, torch.zeros_like(mask_token))
    torch.testing.assert_close(jvp, expected, rtol=0, atol=0)
    assert jvp.abs().sum() > 0  # not the silent zero


def test_mask_tokens_grid_second_order_reaches_the_mask_token(backend):
    tokens = torch.randn(1, 4, 4, 3, device=DEVICE, requires_grad=True)
    mask_token = torch.randn(3, device=DEVICE, requires_grad=True)
    out, cells = mk.mask_tokens_grid(tokens, mask_token, cell_size=2, seed=3)
    v = torch.randn_like(out, requires_grad=True)
    d_tokens, d_mask = torch.autograd.grad(out, (tokens, mask_token), v, create_graph=True)
    (jvp,) = torch.autograd.grad((d_tokens.sum() + 2 * d_mask.sum()), v)
    removed = cells.repeat_interleave(2, 1).repeat_interleave(2, 2)[..., None]  # [1, 4, 4, 1]
    torch.testing.assert_close(jvp, torch.where(removed, 2.0, 1.0).expand_as(out))


@pytest.mark.parametrize("loss", ["soft_target_cross_entropy", "soft_target_bce", "self_distillation", "masksub"])
def test_per_row_losses_can_be_changed_in_place(backend, loss):
    z, s = _logits(4, 7), _logits(4, 7, seed=1)
    y = torch.tensor([1, 3, 2, 0], device=DEVICE)
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0], device=DEVICE)
    calls = {
        "soft_target_cross_entropy": lambda: mk.soft_target_cross_entropy(z, y, reduction="none"),
        "soft_target_bce": lambda: mk.soft_target_bce(z, y, reduction="none"),
        "self_distillation": lambda: mk.self_distillation_loss(s, z, reduction="none"),
        "masksub": lambda: mk.masksub_loss(z, s, y, reduction="none").main,
    }
    per_row = calls[loss]()
    expected = torch.autograd.grad((per_row * weights).sum(), (z, s), allow_unused=True)
    per_row = calls[loss]()
    per_row *= weights
    got = torch.autograd.grad(per_row.sum(), (z, s), allow_unused=True)
    for a, b in zip(got, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", LINEAR_BACKENDS)
def test_fused_linear_per_row_losses_can_be_changed_in_place(name):
    h, hs, w = _logits(4, 5), _logits(4, 5, seed=1), _logits(7, 5, seed=2)
    y, weights = torch.tensor([1, 3, 2, 0], device=DEVICE), torch.tensor([0.5, 2.0, 1.0, 3.0], device=DEVICE)
    calls = (
        lambda: mk.linear_masksub_loss(h, hs, w, None, y, reduction="none").sub,
        lambda: mk.linear_soft_target_cross_entropy(h, w, None, y, reduction="none"),
    )
    with mk.use_backend(name):
        for per_row in calls:
            expected = torch.autograd.grad((per_row() * weights).sum(), (h, w))
            rows = per_row()
            rows *= weights
            for a, b in zip(torch.autograd.grad(rows.sum(), (h, w)), expected):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# The options whose edges were wrong: temperatures whose gradient cancels away, the reserved ignore_index
# ---------------------------------------------------------------------------------------------------------------


def test_temperatures_above_2_to_13_are_refused():
    z, s = _logits(2, 5), _logits(2, 5, seed=1)
    mk.self_distillation_loss(s, z, temperature=2.0**13)
    for t in (2.0**13 * 1.01, 1e9):
        with pytest.raises(ValueError, match=r"temperature must be .*in \[2\*\*-63, 2\*\*13\]"):
            mk.self_distillation_loss(s, z, temperature=t)


def test_the_reserved_ignore_index_is_refused():
    z, s = _logits(2, 5), _logits(2, 5, seed=1)
    y = torch.tensor([-(2**63), 1], device=DEVICE)
    with pytest.raises(ValueError, match=r"ignore_index must fit in int64 and not be -2\*\*63 \(reserved\)"):
        mk.masksub_loss(z, s, y, ignore_index=-(2**63))
    mk.masksub_loss(z, s, y.clamp(min=-(2**63) + 1), ignore_index=-(2**63) + 1)


def test_numpy_integer_seeds_and_backend_names():
    assert torch.equal(mk.random_keep_indices(2, 9, 4, seed=np.int64(7)), mk.random_keep_indices(2, 9, 4, seed=7))
    for name in (None, 3):
        with pytest.raises(TypeError, match="the backend must be a name"):
            mk.set_backend(name)


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_transforms_are_refused_clearly(transform):
    z, s = _logits(4, 7), _logits(4, 7, seed=1)
    y = torch.tensor([1, 3, 0, 2], device=DEVICE)
    if transform == "grad":
        with pytest.raises(RuntimeError, match=r"^masksub_loss \(op .*does not support torch\.func"):
            torch.func.grad(lambda t: mk.masksub_loss(t, s.detach(), y).loss)(z.detach())
    else:  # a single-branch loss names itself, not the op it shares (helper-201)
        other = {"soft_target_cross_entropy": y, "soft_target_bce": s.detach().softmax(1),
                 "self_distillation_loss": s.detach()}  # fmt: skip
        for name, second in other.items():
            loss = getattr(mk, name)
            with pytest.raises(RuntimeError, match=rf"^{name} does not support torch\.func"):
                torch.func.vmap(lambda t, loss=loss, second=second: loss(t, second))(torch.stack([z.detach()] * 2))


def _forward_ad_calls():
    """(name, function of a make-dual function) for each public op, a dual tensor in one input."""
    images, tokens, x = (torch.randn(*shape, device=DEVICE) for shape in ((2, 3, 8, 8), (2, 4, 4, 6), (2, 5, 6)))
    token = torch.randn(6, device=DEVICE)
    z, s = torch.randn(4, 7, device=DEVICE), torch.randn(4, 7, device=DEVICE)
    y = torch.tensor([0, 1, 2, 3], device=DEVICE)
    return [
        ("mask_image_grid", lambda d: mk.mask_image_grid(d(images), 0.5, cell_size=4, seed=1)),
        ("mask_tokens_grid", lambda d: mk.mask_tokens_grid(d(tokens), token, 0.5, cell_size=2, seed=1)),
        ("mask_tokens_grid token", lambda d: mk.mask_tokens_grid(tokens, d(token), 0.5, cell_size=2, seed=1)),
        ("random_token_select", lambda d: mk.random_token_select(d(x), 0.5, num_prefix_tokens=1, seed=1)),
        ("masksub_loss sub", lambda d: mk.masksub_loss(z, d(s), y)),
        ("soft_target_bce", lambda d: mk.soft_target_bce(d(z), y)),
        ("self_distillation_loss", lambda d: mk.self_distillation_loss(d(s), z)),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", range(7))
def test_forward_mode_ad_is_refused_on_every_backend(backend, case, requires_grad):
    # helper-105: the Triton kernels dropped the tangent (a zero jvp, silently); the reference took it for the grid
    # masks unless the primal required grad, where the autograd.Function (no jvp) raised inside torch
    from torch.autograd import forward_ad

    _name, call = _forward_ad_calls()[case]

    def dual(t):
        t = t.clone().requires_grad_(requires_grad)
        return forward_ad.make_dual(t, torch.ones_like(t))

    with forward_ad.dual_level(), pytest.raises(RuntimeError, match=r"does not support forward-mode AD"):
        call(dual)
    call(lambda t: t)  # outside a dual level: unchanged


@pytest.mark.parametrize("name", LINEAR_BACKENDS)
def test_the_fused_linear_loss_refuses_forward_mode_ad(name):
    from torch.autograd import forward_ad

    h, w, y = torch.randn(4, 6, device=DEVICE), torch.randn(7, 6, device=DEVICE), torch.tensor([0, 1, 2, 3])
    with mk.use_backend(name), forward_ad.dual_level():
        with pytest.raises(RuntimeError, match=r"does not support forward-mode AD"):
            mk.linear_masksub_loss(h, h, forward_ad.make_dual(w, torch.ones_like(w)), None, y.to(DEVICE))


# A probe of MaskSubOp's own machinery (ops/_common.py): an op whose backward is a matmul, which autocast would run in
# bf16. The library's ops' backwards call other ops (each run with autocast off) or kernels, so none of them shows
# whether the autograd.Function's backward itself runs without the caller's autocast (helper-196's survivor).
def _probe_backward(ctx, grad):
    x, w = ctx.saved_tensors
    return grad @ w.T, x.T @ grad


@pytest.fixture(scope="module")
def matmul_probe():
    from masksub_kernels.ops._common import masksub_op

    def reference(x, w):
        return x @ w

    @masksub_op("test_matmul_probe", device="x", torch=reference, triton=reference, cuda=None)
    def probe(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [M, K] @ w [K, N]"""

    probe.register_fake(lambda x, w: x.new_empty(x.shape[0], w.shape[1]))
    probe.register_autograd(_probe_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))
    return probe


def test_an_ops_backward_runs_without_the_callers_autocast(matmul_probe):
    # a backward called inside the caller's autocast (CPU autograd runs on the calling thread) computes what it
    # computes outside it: fp32 gradients of fp32 inputs, not bf16 matmuls rounded back
    gen = torch.Generator().manual_seed(0)
    x, w = (torch.randn(8, 16, generator=gen).to(DEVICE), torch.randn(16, 4, generator=gen).to(DEVICE))
    grads = []
    for enabled in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (x, w)]
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=enabled):
            out = matmul_probe(*leaves)
            assert out.dtype == torch.float32  # the forward, too
            out.sum().backward()
        grads.append([t.grad for t in leaves])
    for outside, inside in zip(*grads):
        assert inside.dtype == torch.float32 and torch.equal(inside, outside)


@pytest.mark.parametrize("case", [0, 2, 5])
def test_loss_backward_with_create_graph_is_refused_while_traced(backend, case):
    # helper-196's survivor: the refusal was skipped under make_fx, whose trace then went on to torch's own "no
    # autograd formula was registered" at the second grad (or a silent zero with materialize_grads); it is refused
    # there as in eager, naming the function called
    from torch.fx.experimental.proxy_tensor import make_fx

    name, loss_of = _losses()[case]

    def hvp(z, s, v):
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(z, s), z, create_graph=True)
        return torch.autograd.grad((g * v).sum(), z, allow_unused=True, materialize_grads=True)[0]

    z, s, v = _logits(4, 7), _logits(4, 7, seed=1), torch.randn(4, 7, device=DEVICE)
    with pytest.raises(RuntimeError, match=_named(name)):  # (the loss's target: a real tensor, so real mode)
        make_fx(hvp)(z, s, v)


def test_losses_pass_gradcheck_at_fp32_output_tolerances():
    # docs/api.md: losses come back in fp32 even for fp64 logits, so gradcheck needs eps=1e-3, atol ~2e-3 (helper-303)
    z = _logits(3, 5, seed=4).double().detach().requires_grad_()
    s = _logits(3, 5, seed=5).double().detach().requires_grad_()
    y = torch.tensor([0, 3, -100], device=DEVICE)
    probs = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(6)), 1).double().to(DEVICE)
    tolerances = {"eps": 1e-3, "atol": 2e-3, "rtol": 1e-3}
    with mk.use_backend("torch"):
        for target in (y, probs):
            assert torch.autograd.gradcheck(
                lambda z, target=target: mk.soft_target_cross_entropy(z, target, label_smoothing=0.1),
                (z,),
                **tolerances,
            )
        for mode in ("ce", "bce"):  # the sub branch, w.r.t. the sub logits (the main logits' are its teacher)
            sub = lambda s, mode=mode: mk.masksub_loss(z.detach(), s, y, mode=mode, temperature=2.0).loss
            assert torch.autograd.gradcheck(sub, (s,), **tolerances)
        whole = lambda z: mk.masksub_loss(z, s.detach(), y).loss  # stop-gradient on the sub term's target: by design,
        assert not torch.autograd.gradcheck(whole, (z,), raise_exception=False, **tolerances)  # not the derivative

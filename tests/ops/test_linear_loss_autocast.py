"""The fused-linear losses under torch.autocast: the head's operands cast as F.linear's would be (floating tensors
but fp64 in autocast's dtype, differentiable casts), so the op is a drop-in for ``F.linear`` + the loss inside an
autocast region (helper-282: an fp32 tied embedding beside autocast's bf16 hidden states was refused, and fp32
hidden states with an fp32 head ran the head in fp32 where F.linear runs bf16). The loss itself stays fp32."""

import pytest
import torch
from conftest import DEVICE
from test_linear_masksub_loss import _small_tiles, op_backend  # noqa: F401 (fixtures)

import masksub_kernels as mk

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")

BF16 = torch.bfloat16


def _autocast():
    return torch.autocast(DEVICE.type, dtype=BF16)


def _head(seed: int = 0, rows: int = 20, classes: int = 40, depth: int = 24):
    generator = torch.Generator().manual_seed(seed)
    h, hs = (torch.randn(rows, depth, generator=generator) for _ in range(2))
    w, b = torch.randn(classes, depth, generator=generator) / 4, torch.randn(classes, generator=generator)
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[3] = -100
    return [t.to(DEVICE) for t in (h, hs, w, b)], target.to(DEVICE)


def _leaves(tensors):
    return [t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("single", [False, True])
def test_an_fp32_head_under_autocast_is_the_head_cast_to_autocasts_dtype(op_backend, single):  # noqa: F811
    (h, hs, w, b), target = _head(seed=1)

    def loss(h, hs, w, b):
        if single:
            return mk.linear_soft_target_cross_entropy(h, w, b, target)
        return mk.linear_masksub_loss(h, hs, w, b, target).loss

    got_inputs = _leaves((h, hs, w, b))
    with _autocast():
        got = loss(got_inputs[0].to(BF16), *got_inputs[1:])  # bf16 hidden states (a layer under autocast), fp32 rest
    got.backward()
    want_inputs = _leaves((h, hs, w, b))
    want = loss(*(t.to(BF16) for t in want_inputs))  # the casts F.linear would make, by hand, no autocast
    want.backward()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    for leaf, other in zip(got_inputs, want_inputs):
        if leaf.grad is None:  # (the single branch: no sub_hidden)
            assert single and other.grad is None
            continue
        assert leaf.grad.dtype == torch.float32  # the weight's and bias's gradients in their own dtype
        torch.testing.assert_close(leaf.grad, other.grad, rtol=0, atol=0)


def test_fp32_operands_under_autocast_run_the_head_in_autocasts_dtype():
    (h, hs, w, b), target = _head(seed=2)
    with _autocast():
        got = mk.linear_masksub_loss(h, hs, w, b, target)
    want = mk.linear_masksub_loss(*(t.to(BF16) for t in (h, hs, w, b)), target)
    fp32 = mk.linear_masksub_loss(h, hs, w, b, target)
    assert torch.equal(got.loss, want.loss) and not torch.equal(got.loss, fp32.loss)


def test_fp64_operands_are_left_as_autocast_leaves_them():
    (h, hs, w, b), target = _head(seed=3)
    h, hs, w, b = (t.double() for t in (h, hs, w, b))
    with _autocast():
        got = mk.linear_masksub_loss(h, hs, w, b, target)
    assert torch.equal(got.loss, mk.linear_masksub_loss(h, hs, w, b, target).loss)
    with _autocast(), pytest.raises(TypeError, match=r"weight must be .* with main_hidden's dtype"):
        mk.linear_masksub_loss(h, hs, w.float(), b, target)  # (as F.linear under autocast: fp64 beside bf16)


def test_operands_on_another_device_type_are_not_cast():
    # as autocast: a tensor of another device type than the hidden states' is left as given (helper-286: the
    # refusal reported the cast dtype, and a large weight was copied before the refusal)
    (h, hs, w, b), target = _head(seed=5)
    with _autocast(), pytest.raises(TypeError, match=r"got \[40, 24\] torch.float32 meta"):
        mk.linear_masksub_loss(h, hs, w.to("meta"), b, target)


def test_the_cast_hint_offers_autocast_only_where_it_helps():
    (h, hs, w, b), target = _head(seed=6)
    with pytest.raises(TypeError, match=r"torch.float32 \S+ \(cast it: weight.to\(main_hidden.dtype\), or run under"):
        mk.linear_masksub_loss(h.to(BF16), hs.to(BF16), w, b, target)
    for autocast in (False, True):  # fp64 hidden states: autocast leaves them, so it would not help
        with torch.autocast(DEVICE.type, dtype=BF16, enabled=autocast), pytest.raises(TypeError) as error:
            mk.linear_masksub_loss(h.double(), hs.double(), w, b, target)
        assert str(error.value).endswith("torch.float32 " + str(w.device) + " (cast it: weight.to(main_hidden.dtype))")
    # an fp64 weight beside fp32 hidden states: autocast leaves it fp64 too (helper-312: it offered autocast)
    with pytest.raises(TypeError) as error:
        mk.linear_masksub_loss(h, hs, w.double(), b, target)
    assert str(error.value).endswith("torch.float64 " + str(w.device) + " (cast it: weight.to(main_hidden.dtype))")


def test_the_cast_under_a_compiled_autocast_region():
    (h, hs, w, b), target = _head(seed=4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(h, hs, w, b):
        with _autocast():
            return mk.linear_masksub_loss(h.to(BF16), hs, w, b, target).loss

    got_inputs, want_inputs = _leaves((h, hs, w, b)), _leaves((h, hs, w, b))
    got = step(*got_inputs)
    got.backward()
    want = mk.linear_masksub_loss(*(t.to(BF16) for t in want_inputs), target).loss
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for leaf, other in zip(got_inputs, want_inputs):
        assert leaf.grad.dtype == torch.float32
        torch.testing.assert_close(leaf.grad, other.grad, rtol=1e-2, atol=1e-6)


def test_a_three_dimensional_hidden_state_is_told_to_flatten():
    h, w, target = torch.randn(3, 4, 8), torch.randn(9, 8), torch.randint(0, 9, (3, 4))
    with pytest.raises(ValueError, match=r"got shape \(3, 4, 8\) \(flatten the leading dimensions into rows"):
        mk.linear_soft_target_cross_entropy(h, w, None, target)
    with pytest.raises(ValueError, match=r"got shape \(8,\)$"):  # (1-D: no flattening to suggest)
        mk.linear_soft_target_cross_entropy(h[0, 0], w, None, target[0])


# kills _linear_loss_checks.py:28 `dtype = torch.get_autocast_dtype(device)` -> `dtype = torch.bfloat16` (every test
# above runs a bf16 region: a cast to a fixed bf16 passed them all)
def test_the_cast_is_to_the_regions_own_dtype():
    (h, hs, w, b), target = _head(seed=5)
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        got = mk.linear_masksub_loss(h, hs, w, b, target)
    want = mk.linear_masksub_loss(*(t.half() for t in (h, hs, w, b)), target)
    assert torch.equal(got.loss, want.loss)


# kills _linear_loss_checks.py:25 `device = hidden.device.type` -> `device = "cpu"` on a CPU run (the tensors' own
# device's region decides: meta tensors under a CPU region are left as they are, so a bf16 hidden state beside an fp32
# head is refused as without autocast), and :26 dropping `not torch.amp.is_autocast_available(device) or` (the
# autocast query itself raised for the meta device)
def test_a_region_of_another_device_leaves_the_operands_as_they_are():
    h, w = torch.randn(4, 8, device="meta", dtype=BF16), torch.randn(9, 8, device="meta")
    target = torch.zeros(4, dtype=torch.int64, device="meta")
    with torch.autocast("cpu", dtype=BF16), pytest.raises(TypeError, match=r"weight must be .* with hidden's dtype"):
        mk.linear_soft_target_cross_entropy(h, w, None, target)


# kills _linear_loss_checks.py:31 dropping `x.is_floating_point() and` (integer hidden states were cast to the
# region's dtype and accepted; F.linear's autocast casts floating tensors only)
def test_integer_hidden_states_are_refused_under_autocast_too():
    (h, hs, w, b), target = _head(seed=6)
    with _autocast(), pytest.raises(TypeError, match="main_hidden must be float32, float16, bfloat16 or float64"):
        mk.linear_masksub_loss(h.long(), hs, w, b, target)


# kills _linear_loss_checks.py:25 dropping `if isinstance(hidden, torch.Tensor) else None` (a list as the hidden
# states: AttributeError 'list' object has no attribute 'device' instead of the TypeError naming the argument)
def test_hidden_states_that_are_not_a_tensor_are_refused_by_name():
    (h, hs, w, b), target = _head(seed=7)
    with pytest.raises(TypeError, match=r"main_hidden must be a torch\.Tensor, got list"):
        mk.linear_masksub_loss(h.tolist(), hs, w, b, target)
    with pytest.raises(TypeError, match=r"hidden must be a torch\.Tensor, got list"):
        mk.linear_soft_target_cross_entropy(h.tolist(), w, b, target)


# kills _linear_loss_checks.py:44 `hidden.dim() > 2` -> `hidden.dim() >= 2` (a 2-D hidden state of depth 0 was told
# to flatten; the test above tries 3-D and 1-D only)
def test_a_hidden_state_of_depth_zero_is_not_told_to_flatten():
    with pytest.raises(ValueError, match=r"got shape \(4, 0\)$"):
        mk.linear_soft_target_cross_entropy(
            torch.randn(4, 0), torch.randn(9, 0), None, torch.zeros(4, dtype=torch.long)
        )

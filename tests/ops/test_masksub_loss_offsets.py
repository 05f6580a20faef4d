"""Class ids with label smoothing (CE): the sum over a row's classes that the smoothing term needs, at logits with a
large common offset and at fp32's lowest value (helper-245 / 248). The kernels once kept a plain sum z and
subtracted C c at the row's end: 4.5e-4 off the reference at an offset of 1e5 here (6.8e-4 at C = 32000), +inf at
a row of finfo.min on the CUDA kernels. They now sum z - c (shifted, as the softmax's sums). BCE with class ids
keeps its plain sums (N = A - P: accurate to the sums' rounding, its weight w_o <= 1 / C; helper-256): checked
here at the same offsets, with no change to catch."""

import pytest
import torch
from conftest import DEVICE
from test_masksub_loss import F32, assert_close, check_masksub, make_inputs, oracle

import masksub_kernels as mk
from masksub_kernels.ops import _loss_layout as loss_layout
from masksub_kernels.ops import masksub_loss as ml

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


@pytest.mark.parametrize("mode", ["ce", "bce"])
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_smoothed_class_ids_at_a_large_common_offset(backend, monkeypatch, mode, sms):
    # rows of C = 4099 logits (several blocks and a partial last one; under a split, several programs a row) with
    # offsets of +-1e5 and BCE's both signs in one row (its N and P both large): the per-row main term within 2e-6
    # of the float64 oracle on the same fp32 inputs (the plain sums were ~1e-4 off here)
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 1024)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    main, sub, target = make_inputs(4, 4099, F32, "index")
    main[0] += 1e5
    main[1] -= 1e5
    main[2, ::2] += 1e5
    main[2, 1::2] -= 1e5
    main[3] += 3e4
    sub = sub + main.detach()  # the branches nearly agree, as in training
    options = dict(mode=mode, label_smoothing=0.1, reduction="none")
    got = mk.masksub_loss(main, sub, target, **options)
    _, want_main, want_sub, _, _ = oracle(main, sub, target, **options)
    for name, value, want in (("main", got.main, want_main), ("sub", got.sub, want_sub)):
        error = (value.detach().cpu().double() - want.detach()).abs()
        assert bool((error <= 2e-6 * want.detach().abs() + 1e-6).all()), (name, error, want)  # each row's own
    check_masksub(main[:, :1000].contiguous(), sub[:, :1000].contiguous(), target % 1000, **options)


def test_smoothed_class_ids_on_a_row_of_the_lowest_float(kernel_backend):
    # every logit of row 0 torch.finfo(float32).min (a masked_fill value): the uniform softmax, main = log C with
    # smoothing or not, on the CUDA kernels (the plain sum z overflowed to -inf: +inf). Triton's empty state is that
    # value, so the row reads as all -inf there (NaN: docs/semantics.md, Range): checked only not to be +inf.
    main, sub, target = make_inputs(3, 300, F32, "index")
    main[0] = torch.finfo(torch.float32).min
    got = mk.masksub_loss(main, sub, target, label_smoothing=0.1, reduction="none")
    _, want_main, _, _, _ = oracle(main, sub, target, label_smoothing=0.1, reduction="none")
    assert abs(float(want_main[0].detach()) - torch.log(torch.tensor(300.0)).item()) < 1e-5
    if kernel_backend == "cuda":
        assert_close(got.main, want_main, 1e-6, name="main")
    else:
        assert float(got.main[0]) != float("inf")
        assert_close(got.main[1:], want_main[1:], 1e-6, name="main")


def test_label_smoothing_one_with_a_minus_inf_label_logit(backend):
    # helper-256: eps = 1, the one public case where the label's weight w_y equals w_o = 1 / C: the label's
    # correction (w_y - w_o)(z_y - c) is skipped, not 0 * -inf (NaN); any -inf logit of the row costs +inf
    main = torch.randn(3, 300, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    target = torch.tensor([5, 17, 299], device=DEVICE)
    main[0, 5] = float("-inf")  # the label's own logit
    main[1, 3] = float("-inf")  # another class's
    got = mk.masksub_loss(main, main.clone(), target, label_smoothing=1.0, reduction="none").main.cpu()
    z = main[2].double().cpu()
    want = float(torch.logsumexp(z, 0) - z.mean())  # the uniform target: mean_c (lse - z_c)
    assert got[0].item() == float("inf") and got[1].item() == float("inf"), got
    assert abs(got[2].item() - want) <= 1e-5 * abs(want)

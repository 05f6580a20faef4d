"""The sub term's -inf student logits (docs/semantics.md §7): a -inf student logit costs +inf where the teacher's
fp32 probability of its class is nonzero, nothing where it is 0, on every backend, whatever the blocks, lanes and
class splits that the kernels cut a row into."""

import pytest
import torch
from conftest import DEVICE
from test_masksub_loss import F32, assert_close, check_masksub, make_inputs

import masksub_kernels as mk
from masksub_kernels.ops import _loss_layout as loss_layout
from masksub_kernels.ops import masksub_loss as ml

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


@pytest.mark.parametrize(("kind", "temperature"), [("index", 1.0), ("dense", 2.0)])
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_student_minus_inf_where_the_teachers_mass_underflows(backend, monkeypatch, kind, temperature, sms):
    # helper-140: classes masked with a finite -1e4 in the teacher (main) and -inf in the student (sub) carry no
    # teacher mass in the row, but a block or a CUDA lane that starts with them sees them at its own max (weight
    # 1): its sub sum took -inf there, and the rescale to the row's max (a weight of 0) made 0 x -inf = NaN
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    main, sub, target = make_inputs(4, 300, F32, kind)
    main[:, :72], sub[:, :72] = -1e4, float("-inf")  # the first block and some of the second
    main[1, 150:160], sub[1, 150:160] = -1e4, float("-inf")  # in the middle of a row too
    if kind == "dense":
        target[:, :72] = target[1, 150:160] = 0.0
    else:
        target = torch.tensor([100, 200, 299, 72], device=DEVICE)
    check_masksub(main, sub, target, temperature=temperature, reduction="none")
    out = mk.masksub_loss(main, sub, target, temperature=temperature)
    assert all(bool(torch.isfinite(v)) for v in out), out
    # one class in its own lane (the CUDA kernel's lanes take classes in turn), the smallest case
    student, teacher = torch.tensor([[float("-inf"), 0.0, 1.0]], device=DEVICE), torch.tensor([[-200.0, 0.0, 1.0]])
    got = mk.self_distillation_loss(student, teacher.to(DEVICE), reduction="none")
    want = -(torch.softmax(teacher.double(), 1)[:, 1:] * torch.log_softmax(student.double().cpu(), 1)[:, 1:]).sum(1)
    assert_close(got.cpu(), want, 1e-6, name="self_distillation_loss")


def _sub_oracle(student, teacher, temperature):
    """float64 sub term per row: T^2 sum_c p_c (lse(s / T) - s_c / T), p = the fp32 softmax(z / T) (as the
    reference rounds it: a class whose fp32 probability is 0 costs nothing, one whose probability is not costs
    +inf at a -inf student logit)."""
    p = torch.log_softmax(teacher.float().cpu() / temperature, 1).exp().double()
    log_q = torch.log_softmax(student.double().cpu() / temperature, 1)
    return -torch.where(p != 0, p * log_q, 0.0).sum(1) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_student_minus_inf_where_the_teachers_weight_underflows_over_many_rescales(
    backend, monkeypatch, temperature, sms
):
    # helper-142: a teacher that climbs slowly across the row (a ramp) rescales the state of the block, lane or
    # split holding its lowest classes many times, each rescale nonzero, their product below fp32's range. A -inf
    # student logit there was carried as a -inf sum through every rescale: +inf where the reference, whose teacher
    # probability there is 0, is finite. Rows: 0, a ramp of 120 nats (probability e^-120 at class 0: 0 in fp32);
    # 1, a ramp of 95 nats (e^-95 / sum: a denormal, nonzero: +inf on every backend); 2, the 120-nat ramp with a
    # -inf student logit at the top class too (+inf); 3, the 120-nat ramp falling (the lowest classes last); 4 and 5,
    # one -inf student class 90 and 100 nats below the others in z / T (z: 90 T and 100 T): log p = -96 (a subnormal:
    # +inf, which a GPU's flushing exp2 would have lost) and -106 (0: finite).
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    classes = 512
    main, sub, target = make_inputs(6, classes, F32, "index")
    ramp = torch.linspace(0.0, 1.0, classes, device=DEVICE) * temperature
    flat = torch.zeros_like(ramp)
    main = torch.stack([120 * ramp, 95 * ramp, 120 * ramp, 120 * ramp.flip(0), flat, flat]) + 0.01 * main
    sub[:3, :4] = float("-inf")  # the four lowest classes of rows 0-2: a whole 16-byte group (helper-145)
    sub[2, -1] = float("-inf")
    sub[3, -3:] = float("-inf")
    main[4:, 100] = torch.tensor([-90.0, -100.0], device=DEVICE) * temperature
    sub[4:, 100] = float("-inf")
    target = torch.tensor([5, 500, 7, 3, 1, 2], device=DEVICE)
    out = mk.masksub_loss(main, sub, target, temperature=temperature, reduction="none")
    want = _sub_oracle(sub, main, temperature)
    assert want.isfinite().tolist() == [True, False, False, True, False, True]  # the rows the comment says
    assert_close(out.sub.cpu(), want, 1e-6, name="sub")
    # the rest as the reference backend computes it (the oracle of test_masksub_loss takes float64 teachers, whose
    # probability at class 0 is not 0): the other outputs, the reductions of the finite rows, both gradients
    rows = [0, 3, 5]
    main, sub = main.requires_grad_(), sub.requires_grad_()
    with mk.use_backend("torch"):
        ref = mk.masksub_loss(main, sub, target, temperature=temperature, reduction="none")
        ref_mean = mk.masksub_loss(main[rows], sub[rows], target[rows], temperature=temperature)
        ref_grads = torch.autograd.grad(ref.main.sum() + ref.sub[rows].sum(), (main, sub))
    assert_close(out.main.cpu(), ref.main.detach().cpu(), 1e-6, name="main")
    got_mean = mk.masksub_loss(main[rows], sub[rows], target[rows], temperature=temperature)
    for name, got_value, ref_value in zip(("loss", "main", "sub"), got_mean, ref_mean, strict=True):
        assert_close(got_value.detach().cpu(), ref_value.detach().cpu(), 1e-6, name=name)
    out = mk.masksub_loss(main, sub, target, temperature=temperature, reduction="none")
    grads = torch.autograd.grad(out.main.sum() + out.sub[rows].sum(), (main, sub))
    for name, got_grad, ref_grad in zip(("d main", "d sub"), grads, ref_grads, strict=True):
        assert_close(got_grad.cpu(), ref_grad.cpu(), 1e-6, atol_scale=1e-6, name=name)
    main, sub = main.detach(), sub.detach()
    got = mk.self_distillation_loss(sub, main, temperature=temperature, reduction="none")
    assert_close(got.cpu(), want, 1e-6, name="self_distillation_loss")


@pytest.mark.parametrize("sms", [0, loss_layout.DEFAULT_SMS], ids=["one program per row", "class splits"])
def test_minus_inf_student_logits_at_the_start_of_realigned_rows(backend, monkeypatch, sms):
    # helper-145: fp32 rows of 1023 classes start off 16-byte boundaries (but row 0 and row 4), so the Triton kernels
    # begin them with a masked block from the boundary before (_block_range): its first group holds masked lanes and
    # the row's first classes. Rows 1-3: -inf student logits at classes 0-2, where the teacher's probability is 0
    # (finite), rescaled again in the next block (classes 31-34 at -50); row 5: one -inf student logit at class 0
    # where the teacher's probability is not 0 (+inf).
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(ml, "_device_sms", lambda device: sms)
    main, sub, target = make_inputs(6, 1023, F32, "index")
    assert loss_layout.row_alignment(main, sub) == 4
    main[1:4, :3], sub[1:4, :3] = -110.0, float("-inf")
    main[1:4, 31:35] = -50.0
    sub[5, 0] = float("-inf")
    want = _sub_oracle(sub, main, 1.0)
    assert want.isfinite().tolist() == [True, True, True, True, True, False]
    out = mk.masksub_loss(main, sub, target, reduction="none")
    assert_close(out.sub.cpu(), want, 1e-6, name="sub")
    assert_close(mk.self_distillation_loss(sub, main, reduction="none").cpu(), want, 1e-6, name="self_distillation")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_minus_inf_student_logits_where_the_teachers_probability_is_near_the_smallest_subnormal(backend, temperature):
    # helper-145: +inf or nothing is decided by the fp32 probability exp(log_softmax(z / T)) being 0 (the
    # reference; the kernels compare log2 p with -150); torch.softmax, which the torch backend's CPU path took for
    # T != 1 and without a main term, rounds twice and drew that line elsewhere for log p within ~0.5 of -104. Rows:
    # random teachers whose class 0 has log p in [-104.5, -103]: the first where the two roundings disagree each way
    # (where this torch's softmax has such rows), and the first on each side where they agree
    generator = torch.Generator().manual_seed(1)
    rows, classes = 4000, 200
    teacher = torch.randn(rows, classes, generator=generator) * 2
    teacher[:, 0] = -103.0 - 1.5 * torch.rand(rows, generator=generator) + torch.logsumexp(teacher[:, 1:], 1)
    exact = torch.log_softmax(teacher, 1).exp()[:, 0] != 0
    twice = torch.softmax(teacher, 1)[:, 0] != 0
    kinds = (exact & ~twice, ~exact & twice, exact & twice, ~exact & ~twice)
    picked = [int(kind.nonzero()[0]) for kind in kinds if kind.any()]
    teacher = (teacher[picked] * temperature).to(DEVICE)
    student = torch.randn(len(picked), classes, generator=generator).to(DEVICE) * temperature
    student[:, 0] = float("-inf")
    want = _sub_oracle(student, teacher, temperature)
    assert 0 < int(want.isinf().sum()) < len(picked)  # both sides of the line
    got = mk.self_distillation_loss(student, teacher, temperature=temperature, reduction="none")
    assert_close(got.cpu(), want, 1e-6, name="self_distillation_loss")
    target = torch.ones(len(picked), dtype=torch.int64, device=DEVICE)
    got = mk.masksub_loss(teacher, student, target, temperature=temperature, reduction="none").sub
    assert_close(got.cpu(), want, 1e-6, name="masksub_loss.sub")

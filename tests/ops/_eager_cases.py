"""The eager paths' test inputs and comparison, shared by test_masksub_loss_eager.py (the per-row op) and
test_reduced_loss_eager.py (the reduced op): both check an eager path against the reference functions, its oracle.

fp32: values and gradients to 1e-6 relative (plus 1e-6 of the largest gradient); the low precisions to their unit
roundoff (the eager path's roundings may differ from the reference's, never by more).
"""

import torch
from conftest import DEVICE

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
RTOL = {F32: 1e-6, F64: 1e-12, F16: 2**-10, BF16: 2**-7}


def loss_inputs(rows: int, classes: int, dtype: torch.dtype, kind: str, seed: int = 0, scale: float = 3.0):
    """(main, sub [rows, classes] in dtype, target) on DEVICE. kind: 'dense' (probabilities, a third of the classes
    without target mass), 'none' (no target), 'ids', 'ignore' (every third row -100), 'all_ignored', 'bad'
    (out-of-range ids C and -7 next to an ignored row: NaN rows; the public losses refuse them)."""
    gen = torch.Generator().manual_seed(seed)
    main = (torch.randn(rows, classes, generator=gen) * scale).to(dtype)
    sub = (torch.randn(rows, classes, generator=gen) * scale).to(dtype)
    if kind == "dense":
        target = torch.softmax(torch.randn(rows, classes, generator=gen) * 2, 1)
        target[:, ::3] = 0.0  # classes without target mass
    elif kind == "none":
        target = None
    else:
        target = torch.randint(0, classes, (rows,), generator=gen)
        if kind == "ignore":
            target[::3] = -100
        elif kind == "all_ignored":
            target[:] = -100
        elif kind == "bad":
            target[0], target[1], target[2] = classes, -100, -7
    return main.to(DEVICE), sub.to(DEVICE), None if target is None else target.to(DEVICE)


def assert_close_to_oracle(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """actual == expected within RTOL[dtype] relative, plus RTOL[dtype] times expected's largest finite magnitude,
    with NaN in the same places (compared in float64 on the CPU)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.equal(actual.isnan(), expected.isnan()), f"{name}: NaN in other places"
    finite = expected[torch.isfinite(expected)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    rtol = RTOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-30, equal_nan=True, msg=name)

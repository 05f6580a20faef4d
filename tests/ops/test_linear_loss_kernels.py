"""The recompute kernels' online states across several tiles of one program (ops/_linear_loss_kernels.py).

With the tests' small tiles and the interpreter's few programs, the shared inputs run one class tile per program:
no program ever rescales its running softmax states. Here one split per row tile makes each program walk every class
tile (forward, dH) and each dW program every row tile, with a bias ramp that moves each row's maximum into a later
tile; at T = 1 (the teacher shares the main term's softmax, UNIT_T) and T = 2 (its own)."""

import pytest
import torch
from conftest import DEVICE
from test_linear_masksub_loss import (  # noqa: F401 (the fixtures op_backend and _small_tiles, autouse)
    _small_tiles,
    check_against_composite,
    lm,
    make_inputs,
    op_backend,
)

# The interpreter computes the discarded lanes of tl.where too (inf - inf, 0 / 0): numpy warns, the GPU does not.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("mode", "kind"), [("ce", "index_ignore"), ("ce", "dense"), ("bce", "index")])
def test_online_states_over_several_tiles_of_one_program(op_backend, monkeypatch, temperature, mode, kind):  # noqa: F811
    monkeypatch.setattr(lm, "_target_programs", lambda device: 1)  # one split: each program walks every tile
    h, hs, w, b, target = make_inputs(kind=kind, seed=7)
    b = b + torch.linspace(-40.0, 40.0, b.shape[0], device=DEVICE)  # each row's max moves into a later class tile
    options = {"temperature": temperature, "label_smoothing": 0.1, "main_weight": 0.6, "sub_weight": 0.3}
    check_against_composite((h, hs, w, b, target), mode=mode, reduction="none", **options)

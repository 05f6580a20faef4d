"""The order in which the loss forward reads a row's blocks (ops/_masksub_loss_kernels.py, DESCENDING): the
fused-linear chunks' one launch (ops/_loss_fwd_bwd.py, FORWARD_DESCENDING, on by default) reads the whole blocks from
the last down, so that its backward, which reads the row again from its first class, finds the bytes read last in
L2; masksub_loss's own forward reads them from the first up. The values are order-free (the online softmax's states:
test_loss_fwd_bwd.py compares both orders); the order itself is seen here, on the interpreter, by recording each
block's first column as the kernel hands it to _fwd_block, per program: in either order every block is read once (a
mirrored start off by a block would read one twice and skip another)."""

import numpy as np
import pytest
import torch
from conftest import DEVICE

import masksub_kernels as mk
from masksub_kernels._triton import tl
from masksub_kernels.ops import _loss_fwd_bwd as fused
from masksub_kernels.ops import _masksub_loss_kernels as kernels
from masksub_kernels.ops import masksub_loss as ml

pytestmark = [
    pytest.mark.skipif(not mk.triton_interpreted(), reason="records the interpreter's calls"),
    pytest.mark.triton,
]


def _value(x) -> int:
    return int(np.asarray(getattr(getattr(x, "handle", x), "data", x)).ravel()[0])


@pytest.fixture
def blocks(monkeypatch):
    """{row program: [each block's first physical column, in the order read]}, one program per row (no class split)."""
    recorded, block = {}, kernels._fwd_block

    def recording(*args, **kwargs):
        assert _value(tl.program_id(1)) == 0
        recorded.setdefault(_value(tl.program_id(0)), []).append(_value(args[4]))  # start: the block's first column
        return block(*args, **kwargs)

    monkeypatch.setattr(kernels, "_fwd_block", recording)
    monkeypatch.setattr(ml, "SPLIT_PROGRAMS_PER_SM", 0)  # one program per row: the one launch
    return recorded


def _one_launch(z, s, target, bce=False):
    """The one launch's forward and backward of rows z, s (gradients of their own), as the chunk loop makes it."""
    rows = z.shape[0]
    out = torch.empty(ml.NUM_OUT, rows, device=DEVICE)
    tickets = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    into = (torch.empty_like(z), torch.empty_like(s))
    grads = torch.ones(rows, device=DEVICE)
    launch = fused.one_launch(grads, grads, z, s, target, bce, 0.0, 1.0, None, into, None, False)
    assert launch is not None  # not split: the one launch
    fused.forward_backward_triton(
        grads, grads, z, s, target, bce, 0.0, -100, 1.0, None, out=out, tickets=tickets, into=into, launch=launch
    )
    return launch[2]["DESCENDING"]


def test_the_one_launch_descends_by_default_and_masksub_loss_ascends():
    assert fused.FORWARD_DESCENDING is True
    z = torch.zeros(4, 300, device=DEVICE)
    constexprs = ml._forward_config(z, z, torch.zeros(4, dtype=torch.long), False, False, False, True, False, 132)[2]
    assert "DESCENDING" not in constexprs  # the kernel's default: ascending


# CE, the forward's blocks of 16 classes (MAX_BLOCK_C 32), two rows: fp32 rows of 72 (16-byte multiples: not
# realigned), whole blocks at 0, 16, 32, 48, a masked one at 64; bf16 rows of 70 (140 bytes: VEC = 8, each block
# starting on a 16-byte boundary in the row's frame), a masked first block at 0, whole ones at 16, 32, 48, a masked
# last at 64: only the whole blocks change order
LAYOUTS = {
    "aligned": (torch.float32, 72, [48, 32, 16, 0, 64]),
    "realigned": (torch.bfloat16, 70, [0, 48, 32, 16, 64]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("descending", [True, False])
def test_class_ids_whole_blocks_descend_the_masked_ones_in_place(blocks, monkeypatch, descending, layout):
    dtype, classes, descending_order = LAYOUTS[layout]
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 32)
    monkeypatch.setattr(fused, "FORWARD_DESCENDING", descending)
    z, s = (torch.randn(2, classes, device=DEVICE).to(dtype) for _ in range(2))
    assert _one_launch(z, s, torch.tensor([3, classes - 1], device=DEVICE)) is descending
    order = descending_order if descending else [0, 16, 32, 48, 64]
    assert blocks == {0: order, 1: order}


@pytest.mark.parametrize("descending", [True, False])
def test_bce_class_ids_descend_before_the_label_block_only(blocks, monkeypatch, descending):
    # BCE with class ids runs the label's block apart (PEEL): the blocks before it descend, the label's, then the
    # rest ascend; blocks of 16 (MAX_BLOCK_C 64: BCE's forward a quarter), C = 100: whole 0 ... 80, masked 96
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 64)
    monkeypatch.setattr(fused, "FORWARD_DESCENDING", descending)
    z, s = (torch.randn(1, 100, device=DEVICE) for _ in range(2))
    _one_launch(z, s, torch.tensor([40], device=DEVICE), bce=True)
    before = [16, 0] if descending else [0, 16]
    assert blocks == {0: [*before, 32, 48, 64, 80, 96]}


@pytest.mark.parametrize("descending", [True, False])
def test_the_chunk_loop_reads_in_the_order_set(blocks, monkeypatch, descending):
    # the fused-linear op's chunk loop (inputs that require grad, a mean): its one launch, C = 70 (a class tail of
    # 6 in the launch, rows padded to 128 classes), blocks of 16, every row; masksub_loss's forward: ascending
    monkeypatch.setattr(ml, "MAX_BLOCK_C", 32)
    monkeypatch.setattr(fused, "FORWARD_DESCENDING", descending)
    h, hs, w = (torch.randn(n, 8, device=DEVICE, requires_grad=True) for n in (5, 5, 70))
    labels = torch.randint(0, 70, (5,), device=DEVICE)
    with mk.use_backend("triton"):
        mk.linear_masksub_loss(h, hs, w, None, labels).loss.backward()
        order = [48, 32, 16, 0, 64] if descending else [0, 16, 32, 48, 64]
        assert blocks == {row: order for row in range(5)}
        blocks.clear()
        mk.masksub_loss(torch.randn(1, 72, device=DEVICE), torch.randn(1, 72, device=DEVICE), labels[:1])
    assert blocks == {0: [0, 16, 32, 48, 64]}

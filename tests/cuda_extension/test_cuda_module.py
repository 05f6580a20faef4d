"""The CUDA extension masksub_kernels._C (csrc/) as a module: the `cuda` backend, its seed tensors, its stream.

Where the extension imports, its argument checks run on any machine: CPU tensors (and bad metadata) are refused
with messages that say what was expected and what came. Every function is then compared with the PyTorch
reference (bit for bit for the token and grid ops: ids, inverse map, gather, scatter, cell masks, masked images and
tokens, dT; within fp32 rounding for the loss and the mask token's gradient, sums in another order) on the kernels'
device: the compiled extension on CUDA tensors where there is a GPU, else the same sources on the CUDA emulator
with CPU tensors (tools/cuda_emulator.py; there device maths are the host's libm, within the same
tolerances). tests/ops/ runs the public ops on this backend too.
"""

import pytest
import torch
from conftest import CUDA_EMULATED
from extension_under_test import _C, CPU, DEV, EXT, gpu, needs_C, refused

import masksub_kernels as mk
from masksub_kernels.ops import _token_select_reference as reference
from masksub_kernels.ops._common import MAX_TOKENS


@needs_C
def test_extension_is_a_backend():
    # available where it can run: on a GPU, or on CPU tensors once the tests registered the emulator
    assert ("cuda" in mk.available_backends()) == (torch.cuda.is_available() or CUDA_EMULATED)
    assert _C.MAX_SELECT_TOKENS == MAX_TOKENS
    names = ("select_tokens", "gather_tokens", "scatter_tokens", "grid_cell_mask", "mask_image_grid")
    names += ("mask_image_grid_random", "mask_tokens_grid_random")
    names += ("mask_tokens_grid_forward", "mask_tokens_grid_backward", "masksub_loss_forward", "masksub_loss_backward")
    assert all(hasattr(_C, name) for name in names)


@needs_C
def test_seed_tensor_refusals():
    with refused("seed tensor must hold one int64, got int32 with 1 elements"):
        _C.select_tokens(0, torch.zeros(1, dtype=torch.int32), 2, 10, 5, False, True, torch.device("cuda", 0))
    with refused("seed tensor must hold one int64, got int64 with 2 elements"):
        _C.grid_cell_mask(0, torch.zeros(2, dtype=torch.int64), 2, 49, 24, torch.device("cuda", 0))


@gpu
@pytest.mark.gpu
def test_runs_on_the_current_stream():
    stream = torch.cuda.Stream()
    x = torch.randn(8, 197, 256, device=DEV)
    stream.wait_stream(torch.cuda.current_stream())  # x is written on the default stream
    with torch.cuda.stream(stream):
        ids, inv = EXT.select_tokens(5, None, 8, 196, 98, False, True, DEV)
        y = EXT.gather_tokens(x, ids, 1)
        grad_x = EXT.scatter_tokens(y, inv, 1)
    stream.synchronize()
    expected_ids = reference.select_reference(5, 8, 196, 98, CPU, False)
    assert torch.equal(ids.cpu(), expected_ids)
    assert torch.equal(y, reference.gather_reference(x, ids, 1))
    assert torch.equal(grad_x, reference.scatter_reference(y, ids, 1, 196))

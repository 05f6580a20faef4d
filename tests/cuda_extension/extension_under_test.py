"""The CUDA extension under test (tests/cuda_extension/test_*.py): the compiled masksub_kernels._C on a GPU, else
the csrc/ sources on the CUDA emulator (tools/cuda_emulator.py) with CPU tensors, and the marks that skip what this
machine cannot run."""

import pytest
import torch
from conftest import CUDA_EMULATED

from masksub_kernels import _backend

try:
    from masksub_kernels import _C

    _C_MISSING = None
except ImportError as exc:  # not built here (no toolkit, MASKSUB_BUILD_CUDA=0) or built for another torch
    _C, _C_MISSING = None, f"masksub_kernels._C does not import: {exc}"

CPU = torch.device("cpu")
needs_C = pytest.mark.skipif(_C is None, reason=str(_C_MISSING))
gpu = pytest.mark.skipif(not torch.cuda.is_available() or _C is None, reason=_C_MISSING or "needs a CUDA device")

# The kernels under comparison and their device: the extension on a GPU, else csrc/ on the CUDA emulator.
if torch.cuda.is_available() and _C is not None:
    EXT, DEV = _C, torch.device("cuda")
elif CUDA_EMULATED:
    EXT, DEV = _backend._extensions["cpu"], CPU
else:
    EXT = DEV = None
kernels = pytest.mark.skipif(EXT is None, reason="needs a CUDA device, or the CUDA emulator (MASKSUB_CUDA_EMULATOR)")
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def refused(message: str):
    """pytest.raises for a binding's refusal matching ``message``, of the kind the Python backends raise for the same
    input (csrc/bindings.h): TypeError for a dtype, RuntimeError for what only the extension needs (CUDA tensors and
    devices, contiguity) and failed launches, ValueError for the rest (shapes, sizes, ranges, devices of operands)."""
    import re

    if re.search(r"must be (float|int|bool|uint)|dtype of|must hold one int64", message):
        return pytest.raises(TypeError, match=message)
    if re.search(r"CUDA (tensor|device)|contiguous|kernel launch failed", message):
        return pytest.raises(RuntimeError, match=message)
    return pytest.raises(ValueError, match=message)

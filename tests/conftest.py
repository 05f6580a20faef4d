"""Test set-up: the Triton kernels run on the CPU interpreter unless a GPU is present.

TRITON_INTERPRET is read when @triton.jit runs, i.e. when masksub_kernels is imported, so it is set here, before
any import of the package. On a machine with a CUDA device the tests run on CUDA tensors instead (the GPU suite).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import masksub_kernels as mk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def kernel_backends() -> list[str]:
    """The non-reference backends that can run on DEVICE in this process (the CUDA extension may import on a
    machine without a GPU, but runs on CUDA tensors only)."""
    runnable = {"triton"} | ({"cuda"} if DEVICE.type == "cuda" else set())
    return [name for name in mk.available_backends() if name in runnable]


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture(params=["torch", *kernel_backends()])
def backend(request):
    """Each available backend in turn (the reference included), restored afterwards."""
    with mk.use_backend(request.param):
        yield request.param


@pytest.fixture(params=kernel_backends() or [pytest.param("none", marks=pytest.mark.skip("no kernel backend"))])
def kernel_backend(request):
    """Each available non-reference backend in turn."""
    with mk.use_backend(request.param):
        yield request.param

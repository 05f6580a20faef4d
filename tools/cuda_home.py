"""Where the real CUDA toolkit is, for setup.py (the extension build) and check_spills (ptxas reports).

The ``nvcc`` on PATH can be a wrapper script that execs the real toolkit's nvcc; torch.utils.cpp_extension guesses
CUDA_HOME from the nvcc it finds, gets the wrapper's directory, and linking then fails on -lcudart. This module has
no imports beyond the standard library, so setup.py can load it by path before anything is installed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_WRAPPED_NVCC = re.compile(rb"(/\S+)/bin/nvcc")


def find_cuda_home(path_nvcc: str | None = None, fallback: str = "/usr/local/cuda") -> Path | None:
    """The toolkit directory: $CUDA_HOME / $CUDA_PATH when they hold bin/nvcc; else the nvcc on PATH (the target of
    a wrapper script's ``exec /real/bin/nvcc``, or a real nvcc's parent directory); else ``fallback``; else None."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable) and Path(os.environ[variable], "bin", "nvcc").exists():
            return Path(os.environ[variable])
    nvcc = path_nvcc or shutil.which("nvcc")
    if nvcc:
        resolved = Path(nvcc).resolve()
        try:
            head = resolved.read_bytes()[:4096]
        except OSError:
            head = b""
        if head.startswith(b"#!"):
            match = _WRAPPED_NVCC.search(head)
            if match and Path(match.group(1).decode(), "bin", "nvcc").exists():
                return Path(match.group(1).decode())
        elif resolved.parent.name == "bin":
            return resolved.parent.parent
    if fallback and Path(fallback, "bin", "nvcc").exists():
        return Path(fallback).resolve()
    return None

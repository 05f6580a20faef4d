"""torchrun on this machine's CPUs for the tests: ``python -m torch.distributed.run --standalone``."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun(*args: str, world: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``world`` processes of ``args`` (a script and its arguments, or ``-m module ...``), one thread each, with
    this folder on PYTHONPATH (the workers import the tests' helpers); stdout and stderr captured as text."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)

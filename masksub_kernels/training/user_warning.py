"""A UserWarning attributed to the user's line, whichever path into the package raised it.

A fixed ``stacklevel`` names the right line for one call path only: the mlm family's missing-special-mask warning
is raised three frames below ``MaskSub.sub_logits`` but five below ``ms(batch)`` (through torch's ``Module.__call__``
and ``MaskSub.forward``), so the user was shown a line of wrapper.py. Here the level is counted: the first frame
outside this package and outside torch (whose ``Module.__call__`` sits between a user's call and ``forward``), and
outside transformers / accelerate (a ``Trainer`` loop that calls MaskSubTrainer's code).
Python 3.12's ``skip_file_prefixes`` does the same, but the package supports 3.10 and 3.11 too.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

import masksub_kernels

_SKIPPED = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (masksub_kernels, torch))
_LOOPS = ("transformers", "accelerate")  # (MaskSubTrainer: trainer.train()'s loop runs the package's code)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first caller outside masksub_kernels, torch and, where they are
    imported, transformers and accelerate (whose Trainer loop calls MaskSubTrainer's code: the user's line is their
    ``trainer.train()``) (module docstring); with no such frame, at the outermost frame."""
    loops = tuple(
        os.path.dirname(os.path.abspath(module.__file__)) + os.sep
        for module in (sys.modules.get(name) for name in _LOOPS)
        if getattr(module, "__file__", None)
    )
    skipped = _SKIPPED + loops
    frame, level = sys._getframe(1), 2  # stacklevel 2 = this function's caller
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(skipped):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)

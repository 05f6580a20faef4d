"""The optional packages each part of the training layer needs, checked before any work: a missing one is a
one-line error naming the pip extra that brings it, installed from the checkout (not a traceback, a
ModuleNotFoundError, or transformers' "Could not import module 'Trainer'" without a word of accelerate)."""

from __future__ import annotations

import importlib.util
import sys

from .run_setup import UsageError

__all__ = ["missing_message", "require"]


def missing_message(what: str, modules: tuple[str, ...], extra: str) -> str | None:
    """'<what> needs <the missing modules>: pip install --no-build-isolation '.[<extra>]' in the checkout ...', or
    None when every one of ``modules`` (import names) is installed."""
    missing = [name for name in modules if not _installed(name)]
    if not missing:
        return None
    names = {"sklearn": "scikit-learn"}  # pip's name where it is not the import's
    listed = ", ".join(names.get(name, name) for name in missing)
    # the package is installed from its checkout (README), not from an index that knows its name
    return (
        f"{what} needs {listed}, not installed: pip install --no-build-isolation '.[{extra}]' in the masksub_kernels "
        f"checkout (or pip install {listed})"
    )


def require(what: str, modules: tuple[str, ...], extra: str) -> None:
    """Raise a UsageError (the commands' error line, exit status 2) when one of ``modules`` is missing."""
    message = missing_message(what, modules, extra)
    if message is not None:
        raise UsageError(message)


def _installed(name: str) -> bool:
    if sys.modules.get(name) is not None:  # imported already (a stand-in without __spec__ too: find_spec raises)
        return True
    try:
        return importlib.util.find_spec(name) is not None  # (an entry of None in sys.modules: None)
    except (ImportError, ValueError):  # an import hook that refuses it
        return False

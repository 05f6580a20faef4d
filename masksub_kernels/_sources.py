"""The digest of the CUDA extension's sources (csrc/), stamped into masksub_kernels._C when it is built.

setup.py loads this file by path (nothing is installed yet) and compiles the digest into the extension; the package
compares it, in a source checkout, with what csrc/ holds now: an extension built from older sources (a `git pull`
without a rebuild, a copied _C) is refused with the reason rather than run, since its kernels may compute what the
old sources did. Standard library only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# what the real build compiles or includes: csrc/ and csrc/platform/ (csrc/emulator/ is the tests' CPU twin)
SUFFIXES = (".cu", ".cuh", ".h", ".cpp")


def source_files(csrc: Path) -> list[Path]:
    """The sources under ``csrc``: regular files, not hidden ones (an editor's lock symlink, ``.#bindings.cpp``,
    dangles: helper-333), outside csrc/emulator/."""
    return sorted(
        p
        for p in csrc.rglob("*")
        if p.suffix in SUFFIXES
        and not p.name.startswith(".")
        and p.is_file()
        and "emulator" not in p.relative_to(csrc).parts
    )


def sources_digest(csrc: Path) -> str:
    """16 hex digits over the relative paths and contents of the extension's sources (an identifier: 's' first)."""
    digest = hashlib.sha256()
    for path in source_files(csrc):
        digest.update(path.relative_to(csrc).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return "s" + digest.hexdigest()[:16]

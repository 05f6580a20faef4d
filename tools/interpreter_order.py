"""The Triton interpreter's programs in another order than their index's: the tests' stand-in for a GPU's.

Triton's interpreter (triton/runtime/interpreter.py, 3.6 to 3.8) runs a launch's programs one after another in
index order (``program_id(0)`` outermost, ``program_id(2)`` innermost), so the program of the largest index always
runs last. A GPU promises no order. A kernel that takes "the last program" to be the one of the largest index,
where it must count arrivals with a ticket (a split forward's merge, a reduction's last row), passes on the
interpreter and reads unfinished partials on a GPU; the CUDA emulator let such a mutant of the CUDA kernels through
until its blocks ran out of order (csrc/emulator/emulator.h, helper-186). Here, as there: the last program runs
first, then the others from the first up. The kernels' lines and results are unchanged where they do not depend on
the order (every correct kernel), which the whole suite checks by running under it.

How: the interpreter's loop calls ``interpreter_builder.set_grid_idx(x, y, z)`` before each program; the k-th call
(k counting in the loop's order) sets the index of the program at place k of the order above instead.
tests/conftest.py installs it where the interpreter runs the kernels.
"""

from __future__ import annotations

_installed: dict[str, object] = {}  # the interpreter's own set_grid_idx, while ours replaces it


def program_at(k: int, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The index (x, y, z) of the program that runs k-th (0-based) in a launch of ``grid`` programs: the last
    (in the interpreter's loop order, z innermost) first, then from the first up."""
    nx, ny, nz = grid
    linear = nx * ny * nz - 1 if k == 0 else k - 1
    return linear // (ny * nz), linear // nz % ny, linear % nz


def _set_grid_idx(self, x, y, z):
    # (x, y, z) as the interpreter's loop counts them: the k-th program of the launch
    nx, ny, nz = self.grid_dim
    if x < nx and y < ny and z < nz:  # (else the interpreter's own refusal, with the index it was given)
        x, y, z = program_at((x * ny + y) * nz + z, (nx, ny, nz))
    _installed["set_grid_idx"](self, x, y, z)


def install() -> bool:
    """Run the interpreter's programs in the order above (idempotent). False, and nothing replaced, where the
    interpreter has no InterpreterBuilder.set_grid_idx (another Triton: the programs run in index order)."""
    from triton.runtime import interpreter

    if _installed:
        return True
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "set_grid_idx"):
        return False
    _installed["set_grid_idx"] = builder.set_grid_idx
    builder.set_grid_idx = _set_grid_idx
    return True


def uninstall() -> None:
    """Put the interpreter's own order back."""
    from triton.runtime import interpreter

    if _installed:
        interpreter.InterpreterBuilder.set_grid_idx = _installed.pop("set_grid_idx")

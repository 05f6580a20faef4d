"""Sentinel guards around the Triton launchers' outputs, shared by the op tests (helpers 175 and 180's audits).

The interpreter does not bound-check a kernel's stores, and a GPU would corrupt a neighbour's memory without a word:
a store one element (or row) past an output is only seen if something is there to be overwritten. `guard` replaces
an op module's ``torch`` with a stand-in whose ``empty`` / ``empty_like`` hand out views of larger buffers, and the
test checks afterwards that the elements past each view kept their sentinel:

- given views: an allocation of a view's shape and dtype gets that view (the test built it inside a buffer of its
  own and checks the buffer's tail; the order of the given views decides where two match);
- guard rows (``guard_rows=True``): every other ``empty(B, ...)`` gets the first B rows of a buffer with one row
  more, filled with a sentinel (1234.5 for floating dtypes, -7 cast to the others); ``untouched()`` says
  whether every guard row kept it.

Everything else (dtypes, other functions) is torch's own; only the module's own calls are intercepted.
"""

from __future__ import annotations

import torch

INT_SENTINEL, FLOAT_SENTINEL = -7, 1234.5


class GuardedTorch:
    """A module's ``torch``, its allocations guarded (module docstring)."""

    def __init__(self, views=(), guard_rows: bool = False):
        self.views, self.guard_rows = list(views), guard_rows
        self.guards = []  # (guard row, its sentinel-filled copy)
        self.handed = []  # the given views handed out (a view never handed out guards nothing: unused())

    def __getattr__(self, name):
        return getattr(torch, name)

    def _given(self, shape: tuple, dtype: torch.dtype):
        view = next((v for v in self.views if tuple(v.shape) == shape and v.dtype == dtype), None)
        if view is not None:
            self.handed.append(view)
        return view

    def empty(self, *size, **kwargs):
        shape = size[0] if len(size) == 1 and not isinstance(size[0], int) else size
        shape, dtype = tuple(shape), kwargs.get("dtype") or torch.get_default_dtype()
        view = self._given(shape, dtype)
        if view is not None:
            return view
        if not self.guard_rows or not shape:
            return torch.empty(*size, **kwargs)
        buffer = torch.empty(shape[0] + 1, *shape[1:], **kwargs)
        buffer.fill_(FLOAT_SENTINEL if dtype.is_floating_point else INT_SENTINEL)
        self.guards.append((buffer[shape[0] :], buffer[shape[0] :].clone()))
        return buffer[: shape[0]]

    def empty_like(self, like, **kwargs):
        view = self._given(tuple(like.shape), kwargs.get("dtype") or like.dtype)
        return view if view is not None else torch.empty_like(like, **kwargs)

    def unused(self) -> list:
        """The given views no allocation received (a test whose launcher allocates another shape, or elsewhere,
        would check nothing past them)."""
        return [v for v in self.views if not any(v is h for h in self.handed)]

    def untouched(self) -> bool:
        """Whether every guard row still holds its sentinel."""
        return all(torch.equal(row, filled) for row, filled in self.guards)


def guard(monkeypatch, module, views=(), guard_rows: bool = False) -> GuardedTorch:
    """Guard ``module``'s allocations for this test (module docstring); returns the stand-in (its ``guards``)."""
    guarded = GuardedTorch(views, guard_rows)
    monkeypatch.setattr(module, "torch", guarded)
    return guarded

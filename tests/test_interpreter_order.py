"""tools/interpreter_order.py: the Triton interpreter's programs run the last first, then from the first up."""

import pytest
import torch

from masksub_kernels._backend import triton_interpreted
from tools import interpreter_order

triton = pytest.importorskip("triton")
tl = triton.language

pytestmark = pytest.mark.skipif(not triton_interpreted(), reason="the order is the Triton interpreter's")


@triton.jit
def arrival_order(order_ptr, arrivals_ptr):
    # each program's place in the launch: its ticket
    flat = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
    tl.store(order_ptr + flat, tl.atomic_add(arrivals_ptr, 1))


def _order(grid):
    order = torch.full((grid[0] * grid[1] * grid[2],), -1, dtype=torch.int32)
    arrival_order[grid](order, torch.zeros(1, dtype=torch.int32))
    return order.tolist()


def test_the_last_program_runs_first_then_the_others_from_the_first_up():
    assert interpreter_order.install() and interpreter_order.install()  # installed by conftest; idempotent
    assert _order((2, 3, 1)) == [1, 2, 3, 4, 5, 0]  # (1, 2, 0) first; each program's index is its own
    assert _order((1, 1, 1)) == [0]
    assert _order((1, 2, 2)) == [1, 2, 3, 0]
    assert [interpreter_order.program_at(k, (2, 1, 2)) for k in range(4)] == [(1, 0, 1), (0, 0, 0), (0, 0, 1),
                                                                              (1, 0, 0)]  # fmt: skip


def test_uninstalled_the_programs_run_in_index_order():
    interpreter_order.uninstall()
    try:
        assert _order((2, 3, 1)) == [0, 1, 2, 3, 4, 5]
    finally:
        assert interpreter_order.install()


# kills O06 (uninstall leaves the saved method in _installed: install() then returns True and replaces nothing)
def test_installed_again_after_uninstall_the_last_program_runs_first_again():
    interpreter_order.uninstall()
    assert interpreter_order.install()
    assert _order((2, 3, 1)) == [1, 2, 3, 4, 5, 0]


# kills O10 (the hasattr check dropped: install raises AttributeError on a Triton without set_grid_idx)
def test_install_replaces_nothing_where_the_interpreter_has_no_set_grid_idx(monkeypatch):
    # conftest installs it under any Triton: another interpreter keeps its own order (False), it does not fail
    from triton.runtime import interpreter

    interpreter_order.uninstall()
    try:
        monkeypatch.setattr(interpreter, "InterpreterBuilder", type("OtherBuilder", (), {}))
        assert interpreter_order.install() is False and not interpreter_order._installed
    finally:
        monkeypatch.undo()
        assert interpreter_order.install()

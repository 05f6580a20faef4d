"""The training commands' checks that rank 0 alone makes (the files only rank 0 writes: --output, --resume's later
epochs, --tokenizer's directory), with their outcome shared by every rank; and checks that every rank makes (what
each reads: the token blocks rank 0 cached), with every rank's outcome shared."""

from __future__ import annotations

from collections.abc import Callable

from .run_setup import UsageError

__all__ = ["ReportedOnRankZero", "every_rank_check", "rank_zero_check"]


class ReportedOnRankZero(UsageError):
    """A UsageError that rank 0 reported: the other ranks exit with status 2 without printing it again."""


def rank_zero_check(check: Callable[[], None], rank: int, world: int) -> None:
    """Run ``check`` (raises UsageError) on rank 0 and share its outcome: every rank raises, so none goes on into a
    collective that rank 0 has left (under torchrun the other ranks' gloo / NCCL tracebacks would follow the
    error). One broadcast of a Python object under torchrun; nothing else without it."""
    message = None
    if rank == 0:
        try:
            check()
        except UsageError as exc:
            message = str(exc)
    if world > 1:
        import torch.distributed as dist

        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message is not None:
        raise UsageError(message) if rank == 0 else ReportedOnRankZero(message)


def every_rank_check(check: Callable[[], None], rank: int, world: int) -> None:
    """Run ``check`` (raises UsageError) on every rank and share the outcomes: where any rank's fails, every rank
    raises (rank 0 with the first failing rank's message, the others ReportedOnRankZero), so none goes on into a
    collective that another has left (DDP's first one waited up to the process group's timeout). One all-gather of a
    Python object under torchrun; nothing else without it."""
    message = None
    try:
        check()
    except UsageError as exc:
        message = str(exc)
    if world > 1:
        import torch.distributed as dist

        shared: list = [None] * world
        dist.all_gather_object(shared, message)
        failed = [(r, m) for r, m in enumerate(shared) if m is not None]
        message = None if not failed else failed[0][1] if failed[0][0] == 0 else f"rank {failed[0][0]}: {failed[0][1]}"
    if message is not None:
        raise UsageError(message) if rank == 0 else ReportedOnRankZero(message)

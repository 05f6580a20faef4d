"""The training commands' checks that rank 0 alone makes (the files only rank 0 writes: --output, --resume's later
epochs, --tokenizer's directory), with their outcome shared by every rank."""

from __future__ import annotations

from collections.abc import Callable

from .run_setup import UsageError

__all__ = ["ReportedOnRankZero", "rank_zero_check"]


class ReportedOnRankZero(UsageError):
    """A UsageError that rank 0 reported: the other ranks exit with status 2 without printing it again."""


def rank_zero_check(check: Callable[[], None], rank: int, world: int) -> None:
    """Run ``check`` (raises UsageError) on rank 0 and share its outcome: every rank raises, so none goes on into a
    collective that rank 0 has left (under torchrun the other ranks' gloo / NCCL tracebacks followed the error,
    helper-148). One broadcast of a Python object under torchrun; nothing else without it."""
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

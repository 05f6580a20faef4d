"""The training commands' checks that rank 0 alone makes (the files only rank 0 writes: --output, --resume's later
epochs, --tokenizer's directory), with their outcome shared by every rank; and checks that every rank makes (what
each reads: the token blocks rank 0 cached), with every rank's outcome shared.

Under torchrun, what the commands print of a failure, once: an option's error (argparse's, a check of the options
before the process group: the same on every rank) by each machine's local rank 0 alone (option_error,
options_parsed); a rank that a collective stopped because another rank died (peer_failure) one line with the
collective's first line, not gloo's / NCCL's traceback -- the failing rank's own message and traceback are printed
in full, as they were."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator

from .run_setup import UsageError

__all__ = [
    "ReportedOnRankZero",
    "every_rank_check",
    "option_error",
    "options_parsed",
    "peer_failure",
    "rank_zero_check",
]

# How long a silent rank waits before it exits with an option's error: torchrun stops every process once one has
# failed, so a rank exiting at once could have local rank 0 stopped before it printed the error (torchrun stops the
# waiting ranks once local rank 0 has exited)
# (long: in the usual case torchrun stops the waiting ranks as soon as local rank 0 exits, so the wait costs nothing;
# it covers a local rank 0 that reaches the error later than the others, e.g. slower imports)
OPTION_ERROR_WAIT_S = 30.0


def _silent_local_rank() -> bool:
    """A torchrun process other than its machine's first: LOCAL_RANK > 0 with WORLD_SIZE > 1, under torchrun's
    agent (TORCHELASTIC_RUN_ID, which torchrun sets): one process with the ranks' variables set by hand prints."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("LOCAL_RANK", "0")) > 0
    except ValueError:  # not torchrun's numbers: every process prints
        return False


def _wait_for_local_rank_zero() -> None:
    try:
        time.sleep(OPTION_ERROR_WAIT_S)
    except KeyboardInterrupt:  # (Ctrl-C while waiting: exit with the option's status, no traceback)
        pass


def option_error(prog: str, message: str) -> int:
    """``prog: error: message`` on stderr from local rank 0 only (an option's error, raised before the process group:
    the same on every rank, printed once per machine under torchrun; every process without torchrun); 2, the exit
    status of every rank (the others after a short wait, OPTION_ERROR_WAIT_S, that lets local rank 0 print it)."""
    if _silent_local_rank():
        _wait_for_local_rank_zero()
    else:
        print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def options_parsed() -> Iterator[None]:
    """Around a command's argument parsing: argparse's error (usage and message on stderr, SystemExit 2) and its
    --help (stdout, status 0) printed by local rank 0 alone under torchrun; the other ranks exit with the same status,
    silently (after a short wait for an error: a rank exiting 0 stops nothing)."""
    if not _silent_local_rank():
        yield
        return
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    except SystemExit as exc:
        if exc.code not in (0, None):
            _wait_for_local_rank_zero()
        raise


# How gloo and NCCL (and torch's TCP store) report that a peer's process is gone, in their exceptions' messages
_PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote process exited",
)


def peer_failure(exc: BaseException) -> str | None:
    """The one line a rank prints, in place of its traceback, when a collective failed with a message that says a
    peer is gone (gloo's "Connection closed by peer", NCCL's "remote process exited or there was a network
    error", ...): most likely another rank failed and printed its own message. Only a collective's error counts:
    torch.distributed's DistError, or a RuntimeError whose first line names gloo (gloo raises plain RuntimeErrors,
    also out of DDP's backward); never dynamo's / inductor's errors, which can quote a compile worker's broken pipe.
    The line keeps the error's first line: a network fault reads the same as a dead peer. None for any other
    exception, or outside a process group of several ranks."""
    if not isinstance(exc, RuntimeError) or type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return None
    import torch.distributed as dist

    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    collective = isinstance(exc, dist.DistError) or "gloo" in first
    if not collective or not any(gone in text for gone in _PEER_GONE):
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    shown = first if len(first) <= 200 else first[:197] + "..."
    return (
        f"rank {dist.get_rank()}: stopped by a failed collective ({type(exc).__name__}: {shown}): most likely "
        "another rank failed; see its message above (none from a rank killed by a signal, such as the out-of-memory "
        "killer's: torchrun's summary names it)"
    )


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

"""Why a worker exited, and what becomes of its place: the words of the log line the
:class:`~chworkers.workers.crew.Crew` writes when it reaps one (and the reason the
restarts metric counts)."""

from __future__ import annotations

from chworkers.wording import plural
from chworkers.workers.processes import WorkerHandle

__all__ = ["died_unsaid", "exit_reason", "replacement"]


def exit_reason(h: WorkerHandle, booted: bool, exitcode: int | None) -> str:
    """The reason of an exit: the one it was killed or asked to leave for, ``boot``
    (it died starting), or ``crashed``."""
    if h.kill_reason is not None:
        return h.kill_reason
    if not booted:
        return "boot"
    if exitcode == 0 and h.leaving is not None:
        return h.leaving  # recycled or stopped, as asked
    return "crashed"  # even if it was about to be recycled


def replacement(mode: str | None, replaced: bool, waiting: int) -> str:
    """What becomes of an exited worker's place, for its log line."""
    if mode is None:
        return ""  # replaced, as always while running
    if mode == "stopping":
        return "; not replaced (stopping)"
    if replaced:
        return f"; replaced (draining, {plural(waiting, 'task')} {'waits' if waiting == 1 else 'wait'})"
    return "; not replaced (draining, nothing waits)"


def died_unsaid(exitcode: int | None) -> str:
    """Why a worker that died while starting, without saying why, died: only its exit
    code is known. Said as what the code means and where to look: what fails before a
    worker can report is what the process imports as it starts (the main module again
    under ``spawn`` and ``forkserver``, a module a task pickled by reference needs), and
    Python printed its traceback on the worker's stderr."""
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {-exitcode} while starting, before it could say why"
    return (
        f"exit code {exitcode} before it could say why: a module it imports as it starts "
        "(the main module, under spawn or forkserver) may have failed; its traceback is "
        "on stderr"
    )

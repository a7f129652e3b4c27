"""Start methods that re-import the main module, and what goes wrong when they do.

With ``forkserver`` (the default) and ``spawn``, each worker process imports the
program's main module again (as ``__mp_main__``) before it runs anything. A script that
starts a :class:`~chworkers.workers.supervisor.Supervisor` at its top level, without
``if __name__ == "__main__":``, would start one in every worker too; a program read from
stdin cannot be imported again at all. Both used to end as "5 worker processes in a row
died"; these checks say what to do instead.
"""

from __future__ import annotations

import os
import sys

import multiprocess

from chworkers.errors import ConfigError

#: Exit status of a worker process whose re-import of the main module started a
#: Supervisor (EX_CONFIG of sysexits.h): the supervisor stops at the first one.
EXIT_REIMPORTED = 78

GUARD = 'if __name__ == "__main__":'


def reimported_message(start_method: str) -> str:
    main = sys.modules.get("__main__")
    where = getattr(main, "__file__", None) or "the main module"
    return (
        f"a worker process re-imported {where} and it started a Supervisor again: with "
        f"start_method {start_method!r} every worker imports the main module first, so "
        f"start the Supervisor under `{GUARD}` (see the README's example), or use "
        "start_method='fork'"
    )


def refuse_in_bootstrapping_worker(start_method: str) -> None:
    """Called by ``Supervisor.start()``: in a worker process that is still importing the
    main module (the guard is missing), say so on stderr and exit with
    :data:`EXIT_REIMPORTED`, which the supervisor reports at once."""
    if getattr(multiprocess.current_process(), "_inheriting", False):
        sys.stderr.write(f"chworkers: {reimported_message(start_method)}\n")
        sys.stderr.flush()
        os._exit(EXIT_REIMPORTED)


def check_main_importable(start_method: str) -> None:
    """Raise :class:`ConfigError` when workers could not import the main module again
    (a program read from stdin, or from a file that is gone)."""
    if start_method == "fork":
        return
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None):
        return  # python -m package.module: imported by name
    path = getattr(main, "__file__", None)
    if path is None:
        return  # python -c, an interactive session: nothing to re-import
    if not os.path.isfile(path):
        raise ConfigError(
            f"the main program ({path}) is not a file that worker processes can import "
            f"again, which start_method {start_method!r} needs: save it to a file and run "
            f"that (with the Supervisor under `{GUARD}`), or use start_method='fork'",
            key="start_method",
            value=start_method,
            expected="'fork' for a program read from stdin",
        )

"""Whether a process is still there: one answer for every place that asks.

Workers ask about their supervisor, the lease broker about lease holders, the embedded
endpoint about the program that started it. A process that exited but was not reaped
yet (a zombie) counts as gone: it holds nothing and will do nothing more.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours to signal
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

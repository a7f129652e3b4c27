"""``CHWORKERS_*`` environment variables that name no setting: a typo, said out loud.

A key the config file does not know is an error with a suggestion; a variable was
silently ignored, so ``CHWORKERS_SUPERVISOR_WORKERZ=8`` in a unit's environment file (or
a pipeline's variable under a name no pipeline has) left the default in force without a
word. :func:`unknown_variables` finds them for a warning: an error would refuse
variables meant for something else (``CHWORKERS_EMBEDDED_PASSWORD`` is the embedded
endpoint's, test runs have their own), so only those that look like a setting's are
reported: under a section's or a pipeline's prefix, or close to a real name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from chworkers.settings import SettingInfo, describe

__all__ = ["pipeline_prefix", "unknown_variables"]

PREFIX = "CHWORKERS_"


def pipeline_prefix(name: str) -> str:
    """The variables of pipeline ``name`` start with this: ``CHWORKERS_PIPELINE_APP_LOGS_``."""
    return f"{PREFIX}PIPELINE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper() + "_"


def unknown_variables(
    env: Mapping[str, str], settings: type, pipeline_settings: type, pipelines: Iterable[str]
) -> list[tuple[str, str]]:
    """The variables of ``env`` that look like a setting's but name none, each with a
    hint: the closest real name (``did you mean CHWORKERS_SUPERVISOR_WORKERS?``), or
    which names a pipeline's variables start with. ``settings`` is the daemon's settings
    dataclass, ``pipeline_settings`` a pipeline's and ``pipelines`` their names."""
    known = _names(describe(settings))
    pipeline_keys = _names(describe(pipeline_settings))
    prefixes = [pipeline_prefix(name) for name in pipelines]
    for prefix in prefixes:
        known |= {prefix + var.removeprefix(PREFIX) for var in pipeline_keys}
    sections = {info.env.split("_")[1] for info in describe(settings) if "." in info.key}
    scoped = (*(f"{PREFIX}{section}_" for section in sections), f"{PREFIX}PIPELINE_")
    out = []
    for var in sorted(env):
        if not var.startswith(PREFIX) or var in known:
            continue
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
        if close:
            out.append((var, f"did you mean {close[0]}?"))
        elif var.startswith(f"{PREFIX}PIPELINE_"):
            names = ", ".join(f"{p}<KEY>" for p in prefixes) or "none: no pipeline is declared"
            out.append((var, f"a pipeline's variables are {names}"))
        elif var.startswith(scoped):
            out.append((var, "see `chworkers config --defaults` for every variable"))
        # else: not ours to judge (another program's, or a test run's)
    return out


def _names(infos: Iterable[SettingInfo]) -> set[str]:
    """Each setting's variable, and a secret's ``_FILE`` variable."""
    names = {info.env for info in infos}
    return names | {info.env + "_FILE" for info in infos if info.secret}

"""The package root's public surface: ``__all__`` is exactly what is public, grouped by
concept; every name the docs use is there; every name that worked before still does; and
the public signatures say what they take and return (no ``Any``)."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import chworkers
from chworkers import errors

ROOT = Path(__file__).resolve().parent.parent

#: Every name ``from chworkers import X`` gave before the package was cut into layers
#: (issue 12); they must keep working.
BEFORE = {
    "BatchError", "BatcherClosedError", "ChworkersError", "ClickHouseError", "ConfigError",
    "ConnectError", "Connection", "ConnectionConfig", "ConnectionLostError",
    "ConnectionPool", "DeadLetter", "DeadLetters", "EmbeddedClickHouse", "EmbeddedError",
    "Host", "InsertResult", "LeaseBroker", "LeaseClient", "LeaseStats", "MetricsHooks",
    "Middleware", "Notifier", "PoolClosedError", "PoolError", "PoolHooks", "PoolOptions",
    "PoolStats", "PoolTimeoutError", "QueueFullError", "Rejected", "RequestError",
    "ResponseTimeoutError", "RetriesExhaustedError", "RetryPolicy", "SerializationError",
    "ServerError", "SpoolCorruptError", "SpoolError", "SpoolFullError", "SpoolTimeoutError",
    "SpoolWriteError", "StateDirInUseError", "Supervisor", "SupervisorOptions",
    "SupervisorStats", "SupervisorStoppedError", "TaskError", "TaskInfo", "TransportError",
    "Watchdog", "WorkerBootError", "WorkerContext", "WorkerLostError", "__version__",
}  # fmt: skip

#: Classes the docs name that are mechanism, not API: nobody builds or receives one.
DOCUMENTED_INTERNALS = {
    "WorkerSpec": "a worker's configuration, built by the supervisor before the fork",
}

#: Packages whose public signatures may still say ``Any`` (none now).
ANY_ALLOWED_IN: tuple[str, ...] = ()


def public_names() -> set[str]:
    return {
        name
        for name in dir(chworkers)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(chworkers, name))  # e.g. chworkers.errors
        and name not in {"annotations", "importlib", "logging", "TYPE_CHECKING"}
    }


def test_all_matches_public_names() -> None:
    assert len(chworkers.__all__) == len(set(chworkers.__all__)), "a name listed twice"
    assert public_names() == set(chworkers.__all__) - {"__version__"}


def test_all_is_grouped_by_concept() -> None:
    source = (ROOT / "chworkers" / "__init__.py").read_text()
    start = source.index("_EXPORTS: dict[str, str] = {")
    listing = source[start : source.index("}\n", start)]
    groups = re.findall(r"^    # (.+)$", listing, re.M)
    assert len(groups) >= 6, groups
    assert groups[-1] == "Meta"


def test_all_names_resolve() -> None:
    for name in chworkers.__all__:
        assert hasattr(chworkers, name), name
        value = getattr(chworkers, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            # Exported from where it is defined, not from a module that merely imports it.
            module = __import__(value.__module__, fromlist=[name])
            assert getattr(module, name) is value, name


def _type_checking_imports() -> dict[str, str]:
    """What the root imports under ``if TYPE_CHECKING:``, name -> module."""
    tree = ast.parse((ROOT / "chworkers" / "__init__.py").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    found: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: re-export it as itself"
            found[alias.name] = node.module
    return found


def test_type_checkers_see_what_the_root_resolves() -> None:
    """The imports type checkers and IDEs read name the same modules as ``_EXPORTS``."""
    assert _type_checking_imports() == chworkers._EXPORTS


def _fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_importing_the_root_imports_no_layer() -> None:
    """``import chworkers`` loads nothing until a name is used (but the 30 lines that make
    its lazy ``__getattr__``, chworkers/lazy.py, which import no layer), then only what that
    name needs: the daemon's command line and the worker's fork server do not pay for every
    layer (issue 11's start-up target)."""
    _fresh_python(
        "import sys, chworkers\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('chworkers.'))\n"
        "assert loaded == ['chworkers.lazy'], loaded\n"
        "from chworkers import ChworkersError, RetryPolicy\n"
        "assert 'chworkers.workers.supervisor' not in sys.modules\n"
        "assert 'chworkers.daemon.service' not in sys.modules\n"
        "assert 'chworkers.embedded' not in sys.modules\n"
        "from chworkers import Supervisor\n"
        "assert 'chworkers.workers.supervisor' in sys.modules\n"
    )


def test_unknown_names_are_attribute_errors_and_submodules_still_import() -> None:
    try:
        chworkers.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("chworkers.NoSuchThing resolved")
    assert not hasattr(chworkers, "__wrapped__")
    _fresh_python("from chworkers import timeouts, forkguard\nimport chworkers.errors")


def test_dir_lists_every_public_name_before_use() -> None:
    _fresh_python(
        "import chworkers\n"
        "assert set(chworkers.__all__) <= set(dir(chworkers))\n"
        "assert 'Supervisor' not in vars(chworkers)\n"
    )


def test_names_that_worked_before_still_import() -> None:
    namespace: dict[str, object] = {}
    exec(f"from chworkers import {', '.join(sorted(BEFORE))}", namespace)
    assert set(namespace) >= BEFORE
    assert set(chworkers.__all__) >= BEFORE


def test_the_whole_error_tree_is_exported() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, errors.ChworkersError)
        and value.__module__ == errors.__name__
    }
    assert tree - set(chworkers.__all__) == set()


def _classes_in_the_package() -> dict[str, str]:
    """Public class names defined anywhere in chworkers, to the module defining them."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "chworkers").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for name in re.findall(r"^class ([A-Z]\w*)", path.read_text(), re.M):
            found.setdefault(name, module)
    return found


def test_names_the_docs_use_are_exported() -> None:
    """Classes the docs import from ``chworkers`` or name bare in code; a name given with
    its module (``chworkers.embedded.options.EmbeddedOptions``) says where it lives."""
    classes = _classes_in_the_package()
    missing: list[str] = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        imported = {
            name.strip()
            for line in re.findall(r"from chworkers import ([\w, ]+)", text)
            for name in line.split(",")
        }
        code = re.findall(r"```.*?```|`[^`\n]+`", text, re.S)
        named = {
            n for span in code for n in re.findall(r"(?<![\w.-])[A-Z]\w+(?![\w-])", span)
        } & set(classes)
        for name in sorted(imported | named):
            if name not in chworkers.__all__ and name not in DOCUMENTED_INTERNALS:
                missing.append(f"{doc.relative_to(ROOT)}: {name} (from {classes.get(name)})")
    assert not missing, "used in the docs but not exported:\n" + "\n".join(missing)


def _signatures(obj: object) -> list[tuple[str, dict[str, object]]]:
    """(qualified name, annotations) of a function, or of a class's constructor, public
    methods and properties."""
    if inspect.isfunction(obj):
        return [(obj.__qualname__, obj.__annotations__)]
    out = []
    assert inspect.isclass(obj)
    for klass in obj.__mro__:
        if not klass.__module__.startswith("chworkers") or klass.__module__.startswith(
            ANY_ALLOWED_IN
        ):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") and name != "__init__":
                continue
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            if isinstance(member, property):
                member = member.fget
            if inspect.isfunction(member):
                out.append((f"{klass.__qualname__}.{name}", member.__annotations__))
    return out


def _resolved(function: object) -> dict[str, object]:
    """A function's annotations with names resolved (aliases expanded), or as written
    when one of them is only imported for type checking."""
    try:
        return dict(typing.get_type_hints(function))
    except NameError:
        return dict(getattr(function, "__annotations__", {}))


def _classes_named_by(annotation: object) -> Iterator[type]:
    """chworkers' classes an annotation names, also inside ``X | None``, ``list[X]``..."""
    if inspect.isclass(annotation) and annotation.__module__.startswith("chworkers"):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _classes_named_by(arg)


def test_no_any_in_public_signatures() -> None:
    """Exported classes and functions, and the classes their signatures hand out or take
    (``Supervisor.health()``'s Report, ``DeadLetter.batch()``'s InsertSpec, the Task a
    middleware hook is given), followed as far as they lead."""
    found = []
    todo: list[object] = [getattr(chworkers, name) for name in chworkers.__all__]
    seen: set[int] = set()
    while todo:
        value = todo.pop()
        if id(value) in seen or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        seen.add(id(value))
        if value.__module__.startswith(ANY_ALLOWED_IN):
            continue
        if inspect.isclass(value) and issubclass(value, BaseException):
            continue  # the error tree forwards its context keywords as they come
        for qualname, hints in _signatures(value):
            function = _function(value, qualname)
            for param, annotation in {**hints, **_resolved(function)}.items():
                if re.search(r"\bAny\b", str(annotation)):
                    found.append(f"{value.__module__}.{qualname}: {param}: {annotation}")
                todo.extend(_classes_named_by(annotation))
    assert not found, "Any in public signatures:\n" + "\n".join(sorted(set(found)))


def _function(owner: object, qualname: str) -> object:
    """The function ``qualname`` names, on ``owner`` or a class of its MRO."""
    if inspect.isfunction(owner):
        return owner
    assert inspect.isclass(owner)
    klass_name, _, name = qualname.rpartition(".")
    klass = next(k for k in owner.__mro__ if k.__qualname__ == klass_name)
    member = vars(klass)[name]
    if isinstance(member, classmethod | staticmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member

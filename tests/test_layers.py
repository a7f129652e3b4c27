"""The package's layers hold: no module imports a higher layer, and no import cycle.

The layers are import-linter's contract in pyproject.toml (``[tool.importlinter]``,
docs/architecture.md): cli > bench > daemon > workers > clickhouse | embedded > ops >
http > the base modules. Cycles are found here, on grimp's import graph (the one import-linter
builds), as strongly connected components; imports under ``TYPE_CHECKING`` count, since
a cycle of types is a cycle of concepts all the same.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Cycles allowed while work that removes them is in progress (none now); a component
#: not within one of these fails the test.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the contracts of ``cwd``'s pyproject.toml, for the package
    found there first (the working directory leads ``sys.path``)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
            "--no-logo",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """The import graph's strongly connected components of more than one module, and of
    one module that imports itself (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    work: list[tuple[str, Iterator[str]]] = []
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        work.append((module, iter(sorted(graph.find_modules_directly_imported_by(module)))))

    for start in sorted(graph.modules):
        if start in index:
            continue
        visit(start)
        while work:
            module, imported = work[-1]
            for child in imported:
                if child not in index:
                    visit(child)
                    break
                if child in on_stack:
                    low[module] = min(low[module], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    itself = module in graph.find_modules_directly_imported_by(module)
                    if len(component) > 1 or itself:
                        found.append(component)
    return found


def describe_cycle(graph: grimp.ImportGraph, component: Iterable[str]) -> str:
    """One cycle through ``component``, import by import, with the importing lines."""
    members = set(component)
    first = min(members)
    following = min(m for m in graph.find_modules_directly_imported_by(first) if m in members)
    back = (following,)
    if following != first:
        back = graph.find_shortest_chain(importer=following, imported=first) or (following, first)
    chain = (first, *back)
    lines = [f"import cycle among {', '.join(sorted(members))}:"]
    for importer, imported in itertools.pairwise(chain):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details)
        lines.append(f"  {importer} -> {imported} ({where})")
    return "\n".join(lines)


def unexpected_cycles(graph: grimp.ImportGraph) -> list[str]:
    return [
        describe_cycle(graph, component)
        for component in strongly_connected(graph)
        if not any(component <= known for known in KNOWN_CYCLES)
    ]


def test_layers_contract_is_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("chworkers", cache_dir=None)
    cycles = unexpected_cycles(graph)
    assert not cycles, "\n\n".join(cycles)


def root_importers(graph: grimp.ImportGraph) -> list[str]:
    """Modules of the package that import its root (``from chworkers import X`` for a
    re-exported name), each with the importing lines. The layers contract sees such an
    import only where the root's own imports lead to a higher layer; a daemon module
    importing the root breaks no layer, and is still a module reaching around the layers
    through the public surface."""
    found = []
    for importer in sorted(graph.find_modules_that_directly_import("chworkers")):
        details = graph.get_import_details(importer=importer, imported="chworkers")
        where = "; ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details)
        found.append(f"{importer} imports the package root ({where})")
    return found


def test_no_module_imports_the_package_root() -> None:
    graph = grimp.build_graph("chworkers", cache_dir=None)
    found = root_importers(graph)
    assert not found, "\n".join(found)


def test_an_import_of_the_root_is_reported_with_its_line() -> None:
    graph = grimp.ImportGraph()
    graph.add_module("chworkers")
    graph.add_import(
        importer="chworkers.daemon.sources",
        imported="chworkers",
        line_number=12,
        line_contents="from chworkers import ConfigError",
    )
    graph.add_import(
        importer="chworkers.daemon.spool",
        imported="chworkers.timeouts",
        line_number=3,
        line_contents="from chworkers import timeouts",
    )
    assert root_importers(graph) == [
        "chworkers.daemon.sources imports the package root "
        "(l.12: from chworkers import ConfigError)"
    ]


#: A module path of chworkers as a string literal (``"chworkers.bench.cli"``).
_MODULE_NAME = re.compile(r"""f?["']chworkers\.(\w+)\.[\w.{}]+["']""")


def imports_by_name(package: Path) -> list[str]:
    """In modules that import by name (``importlib.import_module``, ``__import__``), the
    names of another subpackage's modules: the contract cannot see such an import, so a
    dependency between layers hidden that way goes unchecked (the command line once
    imported ``chworkers.bench.cli`` so, beside bench in the layers). The package root is
    left out: it sits above every layer, and its lazy names are imported under
    ``TYPE_CHECKING`` too, which the graph sees (tests/test_api.py checks they agree)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "__init__.py":
            continue
        text = path.read_text()
        if "import_module" not in text and "__import__" not in text:
            continue
        parts = path.relative_to(package).parts
        own = parts[0] if len(parts) > 1 else None
        for number, line in enumerate(text.splitlines(), 1):
            for match in _MODULE_NAME.finditer(line):
                if match.group(1) != own:
                    found.append(f"{path.relative_to(package.parent)}:{number}: {line.strip()}")
    return found


def test_no_subpackage_is_imported_by_a_string() -> None:
    found = imports_by_name(ROOT / "chworkers")
    assert not found, "imports the layers contract cannot see:\n" + "\n".join(found)


def test_an_import_by_a_string_is_reported(tmp_path: Path) -> None:
    package = tmp_path / "chworkers"
    (package / "cli").mkdir(parents=True)
    (package / "bench").mkdir()
    (package / "cli" / "main.py").write_text(
        'import importlib\nNAMES = (\n    "chworkers.bench.cli",\n)\n'
        "modules = [importlib.import_module(n) for n in NAMES]\n"
    )
    (package / "bench" / "cli.py").write_text(
        'import importlib\npart = importlib.import_module(f"chworkers.bench.{name}")\n'
    )
    assert imports_by_name(package) == ['chworkers/cli/main.py:3: "chworkers.bench.cli",']


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "chworkers", tmp_path / "chworkers", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "bad_import", "expected"),
    [
        # A lower layer importing a higher one, named with its line.
        (
            "errors.py",
            "import chworkers.daemon.spool",
            "- chworkers.errors -> chworkers.daemon.spool (l.",
        ),
        # The two sides of one layer are independent.
        (
            "embedded/stats.py",
            "from chworkers.clickhouse import dsn",
            "- chworkers.embedded.stats -> chworkers.clickhouse.dsn (l.",
        ),
        # A new module must be given a layer.
        ("stray.py", "", "- chworkers.stray"),
    ],
)
def test_a_broken_layer_is_reported_by_its_import(
    tmp_path: Path, module: str, bad_import: str, expected: str
) -> None:
    copy = copy_of_the_package(tmp_path)
    path = copy / "chworkers" / module
    text = path.read_text() if path.exists() else '"""A module no layer declares."""\n'
    path.write_text(text + f"\n{bad_import}  # noqa\n")
    result = lint_imports(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout, result.stdout


def test_a_cycle_is_reported_import_by_import() -> None:
    graph = grimp.ImportGraph()
    for importer, imported, line in [
        ("chworkers.a", "chworkers.b", 3),
        ("chworkers.b", "chworkers.c", 5),
        ("chworkers.c", "chworkers.a", 7),
        ("chworkers.c", "chworkers.d", 8),
        ("chworkers.e", "chworkers.e", 9),
    ]:
        graph.add_import(
            importer=importer,
            imported=imported,
            line_number=line,
            line_contents=f"import {imported}",
        )
    assert sorted(map(sorted, strongly_connected(graph))) == [
        ["chworkers.a", "chworkers.b", "chworkers.c"],
        ["chworkers.e"],
    ]
    described = unexpected_cycles(graph)
    assert described[0].splitlines() == [
        "import cycle among chworkers.a, chworkers.b, chworkers.c:",
        "  chworkers.a -> chworkers.b (l.3: import chworkers.b)",
        "  chworkers.b -> chworkers.c (l.5: import chworkers.c)",
        "  chworkers.c -> chworkers.a (l.7: import chworkers.a)",
    ]
    assert described[1].splitlines() == [
        "import cycle among chworkers.e:",
        "  chworkers.e -> chworkers.e (l.9: import chworkers.e)",
    ]


def documented_modules() -> dict[str, set[str]]:
    """docs/architecture.md's "The modules of each layer": folder (``daemon/``,
    ``daemon/brokers/``, ``base``, ``settings/``) -> the module names listed for it."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("## The modules of each layer")
    section = text[start : text.index("\n## ", start + 1)]
    listed: dict[str, set[str]] = {}
    for line in section.splitlines():
        if line.startswith("- base: "):
            base, _, settings = line.removeprefix("- base: ").partition("; `settings/`: ")
            listed["base"] = set(re.findall(r"`([\w]+)`", base))
            listed["settings/"] = set(re.findall(r"`([\w]+)`", settings))
        elif m := re.match(r"^\s*- `([\w/]+/)`: (.*)$", line):
            listed[m.group(1)] = set(re.findall(r"`([\w]+)`", m.group(2)))
    return listed


def package_modules() -> dict[str, set[str]]:
    """The same shape, read from chworkers/ itself."""
    package = ROOT / "chworkers"
    found: dict[str, set[str]] = {"base": set()}
    for path in package.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        folder = path.parent.relative_to(package).as_posix()
        if folder == ".":
            if path.name != "__main__.py":
                found["base"].add(path.stem)
        else:
            found.setdefault(folder + "/", set()).add(path.stem)
    return found


def test_architecture_names_every_module_in_its_layer() -> None:
    documented, actual = documented_modules(), package_modules()
    problems = []
    for folder in sorted({*documented, *actual}):
        listed, present = documented.get(folder, set()), actual.get(folder, set())
        if listed != present:
            problems.append(
                f"{folder}: not in docs/architecture.md: {sorted(present - listed)}; "
                f"listed there but not in chworkers/: {sorted(listed - present)}"
            )
    assert not problems, "\n".join(problems)

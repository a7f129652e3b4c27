"""The package root exports exactly its public API."""

from __future__ import annotations

import chworkers


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(chworkers).items()
        if not name.startswith("_")
        and not getattr(value, "__name__", "").startswith("chworkers.")  # submodules
        and name not in {"annotations", "logging"}
    }
    assert public == set(chworkers.__all__) - {"__version__"}


def test_all_names_resolve() -> None:
    for name in chworkers.__all__:
        assert hasattr(chworkers, name), name

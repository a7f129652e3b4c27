"""Lazy package attributes (PEP 562): a package's public names imported on first use.

The package root and :mod:`chworkers.embedded` declare their public names once, as a
mapping name -> defining module, and take their module ``__getattr__`` and ``__dir__``
from :func:`lazy_attributes`: importing the package loads no layer, and each name is
imported from its module when first asked for, then kept in the package's namespace.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public names are ``exports``
    (name -> the module that defines it)."""

    def getattr_(name: str) -> object:
        """Import a public name from its defining module on first use, then keep it."""
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value: object = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return getattr_, dir_

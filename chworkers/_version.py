"""The version of chworkers, declared once (pyproject.toml reads it from here).

A module of its own at the base, so that code inside the package (the CLI's
``--version``, the supervisor's ``chworkers_build_info``) can read it without importing
the package root, which imports every layer.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

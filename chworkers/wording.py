"""How user-visible lines say a count: "1 batch", "2 batches", "1,000 rows".

Summaries, status lines, log lines and errors say how many of something there are;
:func:`plural` gives the noun the number it agrees with, so no line reads "1 batches".
"""

from __future__ import annotations

__all__ = ["article", "plural"]

#: Nouns whose plural is not the noun plus "s".
_IRREGULAR = {"batch": "batches", "entry": "entries", "process": "processes", "child": "children"}


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` (with thousands separators) and ``noun``, in the plural unless it is 1."""
    if count == 1:
        return f"1 {noun}"
    many = (
        plural_form
        or _IRREGULAR.get(noun)
        or (noun + "es" if noun.endswith(("s", "sh", "ch", "x")) else noun + "s")
    )
    return f"{count:,} {many}"


def article(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a str" (by its first letter)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"

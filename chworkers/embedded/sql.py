"""Just enough of ClickHouse's SQL lexer to route a request.

The endpoint never parses SQL itself (chDB does); it only needs to know three things
that ClickHouse's HTTP handler also decides before execution: whether a statement is an
``INSERT`` whose data follows it in the request body (and in which format), where that
data starts, and which output ``FORMAT`` a query asks for. All of this works on bytes,
because the data after ``FORMAT Native`` is binary and must never be decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENT_START = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS = _IDENT_START | frozenset(b"0123456789$")
_SPACE = frozenset(b" \t\n\r\f\v")


class NeedMoreInput(Exception):
    """The statement head is not complete in the bytes seen so far."""


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted", "string", "number", "punct"
    start: int
    end: int
    text: bytes

    @property
    def upper(self) -> str:
        return self.text.decode("utf-8", "replace").upper()


def _skip_space_and_comments(buf: bytes, pos: int, complete: bool) -> int:
    n = len(buf)
    while pos < n:
        c = buf[pos]
        if not complete and pos == n - 1 and c in b"/-":
            raise NeedMoreInput  # may be the start of a comment
        if c in _SPACE:
            pos += 1
        elif buf.startswith(b"--", pos) or c == ord("#"):
            end = buf.find(b"\n", pos)
            if end < 0:
                if not complete:
                    raise NeedMoreInput
                return n
            pos = end + 1
        elif buf.startswith(b"/*", pos):
            depth, pos = 1, pos + 2
            while depth:
                if pos >= n:
                    if not complete:
                        raise NeedMoreInput
                    return n
                if buf.startswith(b"/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif buf.startswith(b"*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
        else:
            return pos
    if not complete and pos >= n:
        raise NeedMoreInput
    return pos


def _next_token(buf: bytes, pos: int, complete: bool) -> Token | None:
    """The token at ``pos`` (after whitespace and comments), or None at the end."""
    pos = _skip_space_and_comments(buf, pos, complete)
    n = len(buf)
    if pos >= n:
        return None
    c = buf[pos]
    if c in _IDENT_START:
        end = pos + 1
        while end < n and buf[end] in _IDENT_CHARS:
            end += 1
        if end >= n and not complete:
            raise NeedMoreInput
        return Token("word", pos, end, buf[pos:end])
    if c in b"'`\"":
        end = pos + 1
        while True:
            if end >= n:
                if not complete:
                    raise NeedMoreInput
                return Token("string" if c == ord("'") else "quoted", pos, n, buf[pos:n])
            d = buf[end]
            if d == ord("\\"):
                end += 2
            elif d == c:
                if end + 1 < n and buf[end + 1] == c:
                    end += 2  # doubled quote
                elif end + 1 >= n and not complete:
                    raise NeedMoreInput
                else:
                    end += 1
                    break
            else:
                end += 1
        kind = "string" if c == ord("'") else "quoted"
        return Token(kind, pos, end, buf[pos:end])
    if c in b"0123456789":
        end = pos + 1
        while end < n and (buf[end] in _IDENT_CHARS or buf[end] == ord(".")):
            end += 1
        if end >= n and not complete:
            raise NeedMoreInput
        return Token("number", pos, end, buf[pos:end])
    return Token("punct", pos, pos + 1, buf[pos : pos + 1])


def _tokens(buf: bytes, complete: bool, start: int = 0) -> list[Token]:
    """Every token of ``buf`` from ``start``; raises NeedMoreInput if it may be cut."""
    out: list[Token] = []
    pos = start
    while True:
        tok = _next_token(buf, pos, complete)
        if tok is None:
            return out
        out.append(tok)
        pos = tok.end


def tokens(text: bytes) -> list[Token]:
    """Every token of a complete statement (its end is its end: never NeedMoreInput)."""
    return _tokens(text, True)


@dataclass(frozen=True)
class InsertHead:
    """An ``INSERT`` whose data follows the statement.

    ``statement`` is what chDB's streaming insert takes (``INSERT INTO t (a, b)``, with
    any SETTINGS clause but without ``FORMAT``), ``fmt`` the input format and
    ``data_offset`` where the data begins in the buffer that was analysed.
    """

    statement: str
    fmt: str
    data_offset: int


def first_keyword(buf: bytes, complete: bool = True) -> str:
    """The statement's first word, upper-cased ('' if there is none).

    With ``complete=False`` raises :class:`NeedMoreInput` if ``buf`` may end inside it.
    """
    tok = _next_token(buf, 0, complete)
    while tok is not None and tok.kind == "punct" and tok.text == b"(":
        tok = _next_token(buf, tok.end, complete)
    return tok.upper if tok is not None and tok.kind == "word" else ""


def _data_start(buf: bytes, pos: int, complete: bool) -> int:
    """ClickHouse's rule: data starts after the first newline or after the blanks."""
    n = len(buf)
    while pos < n and buf[pos] in b" \t\f":
        pos += 1
    if pos < n and buf[pos] == ord("\r"):
        pos += 1
    if pos < n and buf[pos] == ord("\n"):
        pos += 1
    if pos >= n and not complete:
        raise NeedMoreInput
    return pos


def parse_insert(buf: bytes, complete: bool) -> InsertHead | None:
    """Find where an INSERT's inline data starts.

    Returns None when ``buf`` is not an INSERT with inline data (a SELECT, an
    ``INSERT ... SELECT``, DDL, ...). Raises :class:`NeedMoreInput` when ``complete`` is
    false and the statement head may continue beyond ``buf``.
    """
    pos = 0
    tok = _next_token(buf, pos, complete)
    if tok is None or tok.upper != "INSERT":
        return None
    depth = 0
    while True:
        tok = _next_token(buf, tok.end, complete)
        if tok is None:
            return None
        if tok.kind == "punct":
            if tok.text == b"(":
                depth += 1
            elif tok.text == b")":
                depth -= 1
            elif tok.text == b";" and depth == 0:
                return None
            continue
        if depth or tok.kind != "word":
            continue
        word = tok.upper
        if word in ("SELECT", "WITH") or (word == "FROM" and _is_from_infile(buf, tok, complete)):
            return None
        if word == "VALUES":
            statement = buf[: tok.start].decode("utf-8", "surrogateescape").strip()
            return InsertHead(statement, "Values", tok.end)
        if word == "FORMAT":
            name = _next_token(buf, tok.end, complete)
            if name is None or name.kind not in ("word", "quoted"):
                return None
            fmt = name.text.decode("utf-8", "replace").strip('`"')
            statement = buf[: tok.start].decode("utf-8", "surrogateescape").strip()
            return InsertHead(statement, fmt, _data_start(buf, name.end, complete))


def infile_at(statement: bytes) -> int | None:
    """Where ``FROM INFILE`` goes in an INSERT head (``INSERT INTO t (a, b) SETTINGS ...``).

    ClickHouse takes it after the table (or table function) and its column list and
    before a SETTINGS clause. None for any other shape (``PARTITION BY`` of a table
    function, say): such an insert is streamed instead.
    """
    try:
        toks = _tokens(statement, True)
    except NeedMoreInput:  # pragma: no cover - complete=True never asks for more
        return None
    i = 0
    for keyword in ("INSERT", "INTO"):
        if i >= len(toks) or toks[i].kind != "word" or toks[i].upper != keyword:
            return None
        i += 1
    if i < len(toks) and toks[i].kind == "word" and toks[i].upper == "TABLE":
        i += 1
    if i < len(toks) and toks[i].kind == "word" and toks[i].upper == "FUNCTION":
        i += 2  # its name, then its arguments as a group
        if i >= len(toks) or toks[i].text != b"(":
            return None
        i = _after_group(toks, i)
        if i < 0:
            return None
    else:
        named = i
        while i < len(toks) and toks[i].kind in ("word", "quoted"):
            i += 1
            if i < len(toks) and toks[i].kind == "punct" and toks[i].text == b".":
                i += 1
                continue
            break
        if i == named:
            return None
    if i < len(toks) and toks[i].kind == "punct" and toks[i].text == b"(":
        i = _after_group(toks, i)  # the column list
    if i < 0:
        return None
    if i == len(toks):
        return len(statement)
    if toks[i].kind == "word" and toks[i].upper == "SETTINGS":
        return toks[i].start
    return None


def _after_group(toks: list[Token], i: int) -> int:
    """The index after the parenthesised group opening at ``i`` (-1 if it never closes)."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind != "punct":
            continue
        if toks[j].text == b"(":
            depth += 1
        elif toks[j].text == b")":
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def _is_from_infile(buf: bytes, tok: Token, complete: bool) -> bool:
    nxt = _next_token(buf, tok.end, complete)
    return nxt is not None and nxt.upper == "INFILE"


def assigned_settings(buf: bytes) -> set[str]:
    """The names a ``SET a = 1, b = 'x'`` statement assigns (empty for anything else)."""
    try:
        toks = _tokens(buf, True)
    except NeedMoreInput:  # pragma: no cover - complete=True never asks for more
        return set()
    if not toks or toks[0].upper != "SET":
        return set()
    names: set[str] = set()
    depth = 0
    expect_name = True  # after SET and after each top-level comma
    for i, tok in enumerate(toks[1:], start=1):
        if tok.kind == "punct" and tok.text in (b"(", b"["):
            depth += 1
        elif tok.kind == "punct" and tok.text in (b")", b"]"):
            depth -= 1
        elif depth == 0 and tok.kind == "punct" and tok.text == b",":
            expect_name = True
            continue
        if expect_name and tok.kind in ("word", "quoted"):
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            if nxt is None or (nxt.kind == "punct" and nxt.text in (b"=", b",")):
                names.add(tok.text.decode("utf-8", "replace").strip('`"'))
        expect_name = False
    return names


_FORMAT_AT_END = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def output_format(query: bytes) -> str | None:
    """The format named by a top-level ``FORMAT x`` clause of a query, if any."""
    try:
        toks = _tokens(query, True)
    except NeedMoreInput:  # pragma: no cover
        return None
    depth = 0
    found: str | None = None
    for i, tok in enumerate(toks):
        if tok.kind == "punct":
            if tok.text == b"(":
                depth += 1
            elif tok.text == b")":
                depth -= 1
            continue
        if depth == 0 and tok.kind == "word" and tok.upper == "FORMAT" and i + 1 < len(toks):
            name = toks[i + 1].text.decode("utf-8", "replace").strip('`"')
            if _FORMAT_AT_END.match(name):
                found = name
    return found


def settings_clause(statement: bytes) -> dict[str, str]:
    """The ``name = value`` pairs of a statement's top-level SETTINGS clause (string
    values unquoted, others as written); empty if it has none."""
    try:
        toks = _tokens(statement, True)
    except NeedMoreInput:  # pragma: no cover - complete=True never asks for more
        return {}
    out: dict[str, str] = {}
    depth = 0
    start = None
    for i, tok in enumerate(toks):
        if tok.kind == "punct" and tok.text in (b"(", b"["):
            depth += 1
        elif tok.kind == "punct" and tok.text in (b")", b"]"):
            depth -= 1
        elif depth == 0 and tok.kind == "word" and tok.upper == "SETTINGS":
            start = i + 1
    if start is None:
        return out
    i = start
    while i + 2 < len(toks) and toks[i + 1].text == b"=":
        name = toks[i].text.decode("utf-8", "replace").strip('`"')
        value = toks[i + 2]
        text = value.text.decode("utf-8", "surrogateescape")
        if value.kind == "string":
            text = text[1:-1].replace("\\'", "'").replace("''", "'").replace("\\\\", "\\")
        out[name] = text
        i += 3
        if i < len(toks) and toks[i].text == b",":
            i += 1
        else:
            break
    return out


def unquote(tok: Token) -> str:
    """The name a word or quoted-identifier token stands for (its quotes and their
    escapes removed)."""
    text = tok.text.decode("utf-8", "surrogateescape")
    if tok.kind != "quoted":
        return text
    quote = text[0]
    inner = text[1:-1] if len(text) >= 2 and text[-1] == quote else text[1:]
    return inner.replace(quote * 2, quote).replace("\\" + quote, quote).replace("\\\\", "\\")


def table_name(toks: list[Token], i: int) -> tuple[str | None, str] | None:
    """``(database or None, table)`` of the ``[db.]t`` that starts at ``toks[i]``, or
    None when no name (or one of more than two parts) is there."""
    names: list[str] = []
    while i < len(toks) and toks[i].kind in ("word", "quoted"):
        names.append(unquote(toks[i]))
        i += 1
        if i < len(toks) and toks[i].text == b".":
            i += 1
            continue
        break
    if len(names) == 1:
        return None, names[0]
    if len(names) == 2:
        return names[0], names[1]
    return None

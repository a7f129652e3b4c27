"""What a ClickHouse HTTP request asks for, gathered from its URL, headers and body.

The query can come from the ``query`` URL parameter, the body, or both (the body then
continues the URL's text after a newline), whatever the body's Content-Type says, as in
ClickHouse; only ``multipart/form-data`` bodies are forms, carrying parameters and
external data (temporary tables that live for one query). Every URL parameter that is not one of the HTTP
interface's own (``database``, ``session_id``, ``param_*``, ...) is a query setting.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from chworkers.embedded import sql
from chworkers.embedded.exceptions import (
    BAD_ARGUMENTS,
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    UNKNOWN_ROLE,
    clickhouse_error,
)
from chworkers.embedded.protocol import Request

#: Parameters the HTTP interface interprets itself; they are not settings.
RESERVED = frozenset(
    [
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "compress",
        "decompress",
        "client_protocol_version",
        "role",
        "stacktrace",
    ]
)
#: Longest INSERT statement head before its data.
MAX_INSERT_HEAD = 1 << 20
#: Largest form or multipart body (they are parsed whole).
MAX_FORM_BODY = 1 << 30


@dataclass
class ExternalTable:
    """A temporary table sent along with the query (``multipart/form-data``)."""

    name: str
    structure: str
    fmt: str
    data: bytes


@dataclass
class QueryRequest:
    """One query as the HTTP interface received it."""

    method: str
    params: dict[str, str]
    query_prefix: bytes = b""
    body_continues_query: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, str] = field(default_factory=dict)
    external: list[ExternalTable] = field(default_factory=list)
    user: str = "default"
    password: str = ""

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)

    @property
    def database(self) -> str | None:
        return self.params.get("database") or None

    @property
    def session_id(self) -> str | None:
        return self.params.get("session_id") or None

    @property
    def default_format(self) -> str:
        return self.params.get("default_format") or "TabSeparated"

    @property
    def wait_end_of_query(self) -> bool:
        return self.params.get("wait_end_of_query", "0") not in ("0", "", "false")

    @property
    def client_protocol_version(self) -> int:
        value = self.params.get("client_protocol_version") or "0"
        try:
            return int(value)
        except ValueError:
            raise clickhouse_error(
                BAD_ARGUMENTS, f"Invalid client_protocol_version '{value}': not a number"
            ) from None

    @property
    def enable_http_compression(self) -> bool:
        return self.params.get("enable_http_compression", "0") not in ("0", "", "false")


def _credentials(req: Request, params: dict[str, str]) -> tuple[str, str]:
    user = req.header("X-ClickHouse-User")
    key = req.header("X-ClickHouse-Key")
    auth = req.header("Authorization")
    if user is not None or key is not None:
        if auth:
            raise clickhouse_error(
                BAD_ARGUMENTS,
                "Invalid authentication: it is not allowed to use the Authorization HTTP "
                "header and X-ClickHouse-User/X-ClickHouse-Key together",
            )
        return user or "default", key or ""
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "basic":
            raise clickhouse_error(
                BAD_ARGUMENTS, f"Unsupported Authorization scheme '{scheme}': use Basic"
            )
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise clickhouse_error(
                BAD_ARGUMENTS, "Invalid Authorization header: not valid base64 'user:password'"
            ) from None
        name, _, password = decoded.partition(":")
        return name or "default", password
    return params.get("user") or "default", params.get("password", "")


def parse(req: Request, form_body: bytes | None = None) -> QueryRequest:
    """Gather a request's parameters; ``form_body`` is the body of a form request."""
    # Bytes that are not UTF-8 (a binary literal in the query, a binary parameter) must
    # reach chDB as they were sent: surrogateescape keeps them, "replace" would not.
    params = dict(parse_qsl(req.query_string, keep_blank_values=True, errors="surrogateescape"))
    qr = QueryRequest(method=req.method, params=params)
    if form_body is not None:
        qr.body_continues_query = False
        _parse_multipart(req, form_body, qr)
    if params.get("decompress", "0") not in ("0", "") or params.get("compress", "0") not in (
        "0",
        "",
    ):
        raise clickhouse_error(
            NOT_IMPLEMENTED,
            "ClickHouse's internal block compression (compress=1 / decompress=1) is not "
            "supported by the embedded endpoint; use Content-Encoding instead",
        )
    if params.get("role"):
        # ClickHouse sets the role for the query; chDB has no user directories.
        raise clickhouse_error(
            UNKNOWN_ROLE, f"There is no role `{params['role']}` in user directories"
        )
    external_keys = {
        f"{t.name}_{suffix}" for t in qr.external for suffix in ("structure", "format", "types")
    }
    for key, value in params.items():
        if key.startswith("param_"):
            qr.query_params[key[len("param_") :]] = escape_binary(value)
        elif key not in RESERVED and key not in external_keys:
            qr.settings[key] = value
    # ClickHouse also takes the database and the default format from headers.
    for param, header in (
        ("database", "X-ClickHouse-Database"),
        ("default_format", "X-ClickHouse-Format"),
    ):
        from_header = req.header(header)
        if from_header and not params.get(param):
            params[param] = from_header
    query = params.get("query", "")
    qr.query_prefix = (query + "\n").encode("utf-8", "surrogateescape") if query else b""
    qr.user, qr.password = _credentials(req, params)
    return qr


def escape_binary(value: str) -> str:
    """A query parameter's value with its non-UTF-8 bytes as ``\\xNN`` escapes.

    chDB takes parameter values as text (UTF-8), but ClickHouse parses a parameter's
    value in the escaped (TSV) format, where ``\\xFF`` is the byte 0xFF: the value
    ClickHouse gets from ``param_b=%FF`` is the one chDB gets from ``\\xFF``.
    """
    if value.isascii():
        return value
    return "".join(f"\\x{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in value)


def is_form(req: Request) -> bool:
    """Whether the body is ``multipart/form-data`` (external data) rather than query text.

    ClickHouse decides on the media type alone: only ``multipart/form-data`` is read as a
    form (``DynamicQueryHandler::getQuery`` in ``src/Server/HTTPHandler.cpp``); any other
    body, including curl's default ``application/x-www-form-urlencoded``, continues the
    query text.
    """
    ctype = (req.header("Content-Type") or "").lower()
    return req.method == "POST" and ctype.startswith("multipart/form-data")


def _parse_multipart(req: Request, body: bytes, qr: QueryRequest) -> None:
    head = f"Content-Type: {req.header('Content-Type')}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise clickhouse_error(BAD_ARGUMENTS, "Invalid multipart/form-data body")
    files: list[tuple[str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise clickhouse_error(
                BAD_ARGUMENTS, "A multipart/form-data part has no name in Content-Disposition"
            )
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            files.append((name, data))
        else:
            qr.params[name] = data.decode("utf-8", "surrogateescape")
    for name, data in files:
        structure = qr.params.get(f"{name}_structure")
        types = qr.params.get(f"{name}_types")
        if structure is None and types is not None:
            structure = ", ".join(
                f"_{i + 1} {t.strip()}" for i, t in enumerate(types.split(",")) if t.strip()
            )
        if not structure:
            raise clickhouse_error(
                BAD_ARGUMENTS,
                f"External table '{name}' has neither {name}_structure nor {name}_types",
            )
        fmt = qr.params.get(f"{name}_format") or "TabSeparated"
        qr.external.append(ExternalTable(name, structure, fmt, data))


def statement_head(
    prefix: bytes, chunks: Iterator[bytes]
) -> tuple[bytes, sql.InsertHead | None, Iterator[bytes]]:
    """Read until an INSERT's data start is known.

    Returns the bytes read so far (statement and maybe some data), the INSERT's head
    (None if the text is no INSERT with inline data) and the rest of the body.
    """
    buf = bytearray(prefix)
    done = False

    def more() -> bool:
        nonlocal done
        nxt = next(chunks, None)
        if nxt is None:
            done = True
            return False
        buf.extend(nxt)
        return True

    while True:  # is it an INSERT at all? (comments may come first)
        try:
            if sql.first_keyword(bytes(buf), complete=done) != "INSERT":
                return bytes(buf), None, chunks
            break
        except sql.NeedMoreInput:
            if len(buf) > MAX_INSERT_HEAD:
                return bytes(buf), None, chunks  # the engine will say what is wrong
            more()
    while True:
        try:
            head = sql.parse_insert(bytes(buf), complete=done)
        except sql.NeedMoreInput:
            if len(buf) > MAX_INSERT_HEAD and not done:
                raise clickhouse_error(
                    QUERY_IS_TOO_LARGE,
                    f"No FORMAT or VALUES clause within the first {MAX_INSERT_HEAD} bytes "
                    "of the INSERT statement",
                ) from None
            more()
            continue
        return bytes(buf), head, chunks

"""ClickHouse exceptions as the HTTP interface reports them.

Inside the endpoint every failure that the client should see is a
:class:`chworkers.errors.ServerError` carrying ClickHouse's numeric ``code``, its
symbolic ``name`` and the HTTP status ClickHouse uses for that code
(``src/Server/HTTP/exceptionCodeToHTTPStatus.cpp``). The handler turns it into the
body ``Code: 60. DB::Exception: ... (UNKNOWN_TABLE)`` and the header
``X-ClickHouse-Exception-Code``, exactly as clickhouse-connect expects.
"""

from __future__ import annotations

import re

from chworkers.errors import ServerError

#: (code, name) of the errors the endpoint raises itself; chDB names its own.
UNSUPPORTED_METHOD = (1, "UNSUPPORTED_METHOD")
CANNOT_READ_ALL_DATA = (33, "CANNOT_READ_ALL_DATA")
BAD_ARGUMENTS = (36, "BAD_ARGUMENTS")
NOT_IMPLEMENTED = (48, "NOT_IMPLEMENTED")
LOGICAL_ERROR = (49, "LOGICAL_ERROR")
UNKNOWN_COMPRESSION_METHOD = (89, "UNKNOWN_COMPRESSION_METHOD")
UNKNOWN_SETTING = (115, "UNKNOWN_SETTING")
QUERY_IS_TOO_LARGE = (229, "QUERY_IS_TOO_LARGE")
QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING = (216, "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING")
SYNTAX_ERROR = (62, "SYNTAX_ERROR")
TOO_MANY_SIMULTANEOUS_QUERIES = (202, "TOO_MANY_SIMULTANEOUS_QUERIES")
SOCKET_TIMEOUT = (209, "SOCKET_TIMEOUT")
BAD_REQUEST_PARAMETER = (457, "BAD_REQUEST_PARAMETER")
CANNOT_DECOMPRESS = (271, "CANNOT_DECOMPRESS")
SESSION_NOT_FOUND = (372, "SESSION_NOT_FOUND")
SESSION_IS_LOCKED = (373, "SESSION_IS_LOCKED")
INVALID_SESSION_TIMEOUT = (374, "INVALID_SESSION_TIMEOUT")
HTTP_LENGTH_REQUIRED = (381, "HTTP_LENGTH_REQUIRED")
REQUIRED_PASSWORD = (194, "REQUIRED_PASSWORD")
AUTHENTICATION_FAILED = (516, "AUTHENTICATION_FAILED")
UNKNOWN_ROLE = (511, "UNKNOWN_ROLE")
USER_SESSION_LIMIT_EXCEEDED = (700, "USER_SESSION_LIMIT_EXCEEDED")
UNKNOWN_ERROR = (1002, "UNKNOWN_EXCEPTION")

_STATUS_BY_NAME: dict[str, int] = {"REQUIRED_PASSWORD": 401}
for _name in [
    "UNKNOWN_USER",
    "WRONG_PASSWORD",
    "AUTHENTICATION_FAILED",
    "SET_NON_GRANTED_ROLE",
    "ACCESS_DENIED",
]:
    _STATUS_BY_NAME[_name] = 403
for _name in [
    "BAD_ARGUMENTS",
    "CANNOT_COMPILE_REGEXP",
    "CANNOT_PARSE_TEXT",
    "CANNOT_PARSE_ESCAPE_SEQUENCE",
    "CANNOT_PARSE_QUOTED_STRING",
    "CANNOT_PARSE_DATE",
    "CANNOT_PARSE_DATETIME",
    "CANNOT_PARSE_NUMBER",
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    "CANNOT_PARSE_IPV4",
    "CANNOT_PARSE_IPV6",
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    "CANNOT_PARSE_UUID",
    "DUPLICATE_COLUMN",
    "ILLEGAL_COLUMN",
    "UNKNOWN_ELEMENT_IN_AST",
    "UNKNOWN_TYPE_OF_AST_NODE",
    "THERE_IS_NO_COLUMN",
    "TOO_DEEP_AST",
    "TOO_BIG_AST",
    "UNEXPECTED_AST_STRUCTURE",
    "SYNTAX_ERROR",
    "INCORRECT_DATA",
    "TYPE_MISMATCH",
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
]:
    _STATUS_BY_NAME[_name] = 400
for _name in [
    "UNKNOWN_TABLE",
    "UNKNOWN_FUNCTION",
    "UNKNOWN_IDENTIFIER",
    "UNKNOWN_TYPE",
    "UNKNOWN_STORAGE",
    "UNKNOWN_DATABASE",
    "UNKNOWN_SETTING",
    "UNKNOWN_DIRECTION_OF_SORTING",
    "UNKNOWN_AGGREGATE_FUNCTION",
    "UNKNOWN_FORMAT",
    "UNKNOWN_DATABASE_ENGINE",
    "UNKNOWN_TYPE_OF_QUERY",
    "UNKNOWN_ROLE",
]:
    _STATUS_BY_NAME[_name] = 404
_STATUS_BY_NAME.update(
    QUERY_IS_TOO_LARGE=413,
    NOT_IMPLEMENTED=501,
    SOCKET_TIMEOUT=503,
    CANNOT_OPEN_FILE=503,
    HTTP_LENGTH_REQUIRED=411,
    TIMEOUT_EXCEEDED=408,
    CANNOT_SCHEDULE_TASK=503,
    UNSUPPORTED_MEDIA_TYPE=415,
)


def http_status(name: str | None) -> int:
    """ClickHouse's HTTP status for an error name (500 for everything not listed)."""
    return _STATUS_BY_NAME.get(name or "", 500)


def clickhouse_error(error: tuple[int, str], message: str) -> ServerError:
    """A ServerError for one of the endpoint's own errors, worded like ClickHouse."""
    code, name = error
    text = f"Code: {code}. DB::Exception: {message}. ({name})"
    return ServerError(text, code=code, name=name, http_status=http_status(name))


_CODE = re.compile(r"Code: (\d+)\. ")
_NAME_AT_END = re.compile(r"\(([A-Z][A-Z0-9_]*)\)\s*$")
#: chDB's streaming paths wrap an error in its own prefix again ("Code: 27. DB::Exception:
#: Code: 27. DB::Exception: ...") and some end it with the server version, which the
#: response body adds once itself.
_REPEATED_PREFIX = re.compile(r"^(Code: \d+\. DB::Exception: )(?:Code: \d+\. DB::Exception: )+")
_VERSION_AT_END = re.compile(r"\s*\(version [^()]*(?:\([^()]*\))?[^()]*\)\.?\s*$")


def from_chdb(exc: BaseException) -> ServerError:
    """Translate an exception chDB raised (``RuntimeError('Code: 60. ...')``)."""
    text = str(exc).strip()
    m = _CODE.search(text)
    if m is None:
        return clickhouse_error(UNKNOWN_ERROR, text)
    text = _REPEATED_PREFIX.sub(r"\1", text[m.start() :])
    text = _VERSION_AT_END.sub("", text)
    named = _NAME_AT_END.search(text)
    name = named.group(1) if named else None
    return ServerError(text, code=int(m.group(1)), name=name, http_status=http_status(name))


def response_body(err: ServerError, version: str) -> bytes:
    """The error body ClickHouse sends: the message, its version, a newline."""
    return f"{err.message} (version {version})\n".encode("utf-8", "replace")


def exception_block(message: bytes, tag: str) -> bytes:
    """The tagged block ClickHouse (25.11+) writes into a body whose 200 status went out
    already, around ``message`` (:func:`response_body`); ``tag`` is the response's
    ``X-ClickHouse-Exception-Tag``."""
    return (
        b"__exception__\r\n"
        + tag.encode()
        + b"\r\n"
        + message
        + f"{len(message)} {tag}\r\n__exception__\r\n".encode()
    )

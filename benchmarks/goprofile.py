"""A Go CPU profile (``/debug/pprof/profile``, gzipped protobuf) read without Go's
tools: CPU time by function, as ``go tool pprof -top`` prints it (flat: in the
function itself; cumulative: with what it called). For nats-server, whose Debian
binary is stripped (no symbols for perf) but serves its profile with ``--profile PORT``
and names its functions in it (benchmarks/bench_nats_server.py)."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterator


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: an int, or the bytes of a
    length-delimited field."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, at = _varint(data, at)
            yield field, value
        elif kind == 2:
            size, at = _varint(data, at)
            yield field, data[at : at + size]
            at += size
        elif kind == 1:
            yield field, int.from_bytes(data[at : at + 8], "little")
            at += 8
        elif kind == 5:
            yield field, int.from_bytes(data[at : at + 4], "little")
            at += 4
        else:
            raise ValueError(f"protobuf wire type {kind} at byte {at}")


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field's values: packed (bytes) or one."""
    if isinstance(value, int):
        return [value]
    out, at = [], 0
    while at < len(value):
        number, at = _varint(value, at)
        out.append(number)
    return out


def cpu_by_function(profile: bytes) -> tuple[Counter[str], Counter[str], int]:
    """(flat, cumulative) CPU nanoseconds by function name, and the total."""
    data = gzip.decompress(profile) if profile[:2] == b"\x1f\x8b" else profile
    strings: list[str] = []
    samples: list[tuple[list[int], list[int]]] = []
    locations: dict[int, list[int]] = {}  # id -> function ids, the inlined first
    functions: dict[int, int] = {}  # id -> name's string index
    for field, value in _fields(data):
        if field == 6:
            assert isinstance(value, bytes)
            strings.append(value.decode(errors="replace"))
        elif field == 2:
            assert isinstance(value, bytes)
            ids: list[int] = []
            values: list[int] = []
            for f, v in _fields(value):
                if f == 1:
                    ids += _ints(v)
                elif f == 2:
                    values += _ints(v)
            samples.append((ids, values))
        elif field == 4:
            assert isinstance(value, bytes)
            location, lines = 0, []
            for f, v in _fields(value):
                if f == 1:
                    assert isinstance(v, int)
                    location = v
                elif f == 4:
                    assert isinstance(v, bytes)
                    lines += [fv for ff, fv in _fields(v) if ff == 1 and isinstance(fv, int)]
            locations[location] = lines
        elif field == 5:
            assert isinstance(value, bytes)
            parts = {f: v for f, v in _fields(value) if isinstance(v, int)}
            functions[parts.get(1, 0)] = parts.get(2, 0)
    flat: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for ids, values in samples:
        cpu = values[-1] if values else 0  # [samples, cpu nanoseconds]
        total += cpu
        names = [strings[functions[f]] for loc in ids for f in locations.get(loc, [])]
        if names:
            flat[names[0]] += cpu
        for name in set(names):
            cumulative[name] += cpu
    return flat, cumulative, total


def top(profile: bytes, count: int = 25) -> str:
    """``go tool pprof -top``'s table: flat and cumulative shares of the CPU time."""
    flat, cumulative, total = cpu_by_function(profile)
    if not total:
        return "(no samples)"
    lines = [f"{total / 1e9:.2f} s of CPU sampled", f"{'flat%':>6} {'cum%':>6}  function"]
    for name, cpu in flat.most_common(count):
        lines.append(f"{cpu / total:6.1%} {cumulative[name] / total:6.1%}  {name}")
    lines.append("by cumulative share:")
    for name, cpu in cumulative.most_common(count):
        lines.append(f"{flat[name] / total:6.1%} {cpu / total:6.1%}  {name}")
    return "\n".join(lines)

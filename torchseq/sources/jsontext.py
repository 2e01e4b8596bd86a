"""Decoding JSON text by one rule, whether orjson is installed or not.

orjson parses pair lines about twice as fast as the standard library, so it is
used when installed; but the two differ on a dozen inputs (a byte order mark,
lone surrogates, NaN, UTF-16, integers beyond 64 bits, nesting depth). The
rule is orjson's, and the standard library's parser is made to follow it:

* the text is strict UTF-8; a UTF-8 byte order mark before the JSON value is
  ignored (as ``json.loads(bytes)`` does), UTF-16 and UTF-32 are invalid UTF-8;
* a ``\\ud800``-style escape of half a surrogate pair (no other half beside it) is not text: invalid UTF-8;
* ``NaN``, ``Infinity`` and numbers too large for a float are invalid JSON;
  integers outside the 64-bit range (``-2**63 .. 2**64-1``) become floats;
* values nested more than :data:`MAX_DEPTH` levels deep are invalid JSON.

Whatever orjson refuses is decoded again by the strict standard-library
parser, which either accepts it (where an orjson release is stricter than the
rule) or gives the error. So both parsers refuse the same inputs with the same
message, and nothing is added to orjson's fast path.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from torchseq.errors import ConfigError
from torchseq.records import RecordFormatError

#: orjson's nesting limit, enforced on both parsers.
MAX_DEPTH = 1024
PARSERS = ("orjson", "json")
BOM = b"\xef\xbb\xbf"

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _orjson() -> Callable[[bytes], Any] | None:
    try:
        import orjson
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    loads: Callable[[bytes], Any] = orjson.loads
    return loads


_FAST = _orjson()


def use_parser(name: str) -> str:
    """Parse JSON with ``"orjson"`` or ``"json"`` (the standard library) in this process; returns the previous.

    Both follow the same rule (see the module docs); this is for tests and
    benchmarks. DataLoader workers forked afterwards inherit the choice.

    Raises:
        ConfigError: an unknown name, or ``"orjson"`` when it is not installed.
    """
    global _FAST
    if name not in PARSERS:
        raise ConfigError(f"JSON parser must be one of {list(PARSERS)}, got {name!r}")
    previous = "orjson" if _FAST is not None else "json"
    fast = _orjson() if name == "orjson" else None
    if name == "orjson" and fast is None:
        raise ConfigError("the orjson parser is not installed: pip install orjson")
    _FAST = fast
    return previous


def decode_json(raw: bytes) -> Any:
    """Parse JSON bytes by the rule; the error says whether the bytes or the JSON were bad.

    Raises:
        RecordFormatError: reason ``invalid utf-8`` or ``invalid json``.
    """
    if _FAST is not None:
        try:
            return _FAST(raw)
        except ValueError:  # orjson.JSONDecodeError: the strict parser decides and says why
            pass
    return _strict(raw)


def _int(text: str) -> int | float:
    value = int(text)
    if _INT64_MIN <= value <= _UINT64_MAX:
        return value
    try:
        return float(value)
    except OverflowError:
        raise ValueError("number is too large for a float") from None


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number is too large for a float")
    return value


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float, parse_constant=_constant)
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _strict(raw: bytes) -> Any:
    """The standard library's parser, held to the rule."""
    skipped = 3 if raw.startswith(BOM) else 0
    body = raw[skipped:] if skipped else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise RecordFormatError(f"invalid UTF-8 at byte {bad.start + skipped}", "invalid utf-8") from None
    if len(body) > MAX_DEPTH and body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise RecordFormatError(f"invalid JSON (nested too deeply: over {MAX_DEPTH} levels)", "invalid json")
    try:
        try:
            value = _DECODER.decode(text)
        except RecursionError:  # within MAX_DEPTH, but deeper than this interpreter's stack allows
            value = _decode_deep(text)
    except ValueError as exc:
        encoding = text_encoding(body)
        if encoding is not None:
            raise RecordFormatError(f"invalid UTF-8: the text is {encoding}", "invalid utf-8") from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordFormatError(f"invalid JSON ({detail[:200]})", "invalid json") from None
    if b"\\u" in body and (b"\\ud" in body or b"\\uD" in body):
        lone = _lone_surrogate(body)
        if lone is not None:
            raise RecordFormatError(
                f"invalid UTF-8: the escape {lone.group().decode()} at byte {lone.start() + skipped} is a lone "
                "surrogate (half of a pair), not a character",
                "invalid utf-8",
            )
    return value


def _decode_deep(text: str) -> Any:
    """Decode with room for :data:`MAX_DEPTH` more frames (Python < 3.12 counts C recursion there)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + MAX_DEPTH + 64)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply for this interpreter") from None
    finally:
        sys.setrecursionlimit(limit)


def _depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body`` (brackets inside strings do not count)."""
    codes = np.frombuffer(_STRING.sub(b'""', body), dtype=np.uint8)
    steps = (codes == 91).astype(np.int64) + (codes == 123) - (codes == 93) - (codes == 125)
    return int(np.cumsum(steps).max(initial=0))


def _lone_surrogate(body: bytes) -> re.Match[bytes] | None:
    """The first ``\\uD800``-``\\uDFFF`` escape that is not half of an adjacent high-low pair.

    ``body`` parsed as JSON, so every backslash is inside a string and starts
    an escape; scanning escapes from the left tells ``\\\\ud800`` (a backslash,
    then text) from ``\\ud800``.
    """
    high: re.Match[bytes] | None = None
    for match in _ESCAPE.finditer(body):
        digits = match.group(1)
        code = int(digits, 16) if digits is not None else -1
        if high is not None:
            if match.start() == high.end() and 0xDC00 <= code <= 0xDFFF:
                high = None
                continue
            return high
        if 0xD800 <= code <= 0xDBFF:
            high = match
        elif 0xDC00 <= code <= 0xDFFF:
            return match
    return high


def text_encoding(head: bytes) -> str | None:
    """The UTF-16 / UTF-32 encoding the first bytes of a text file show (a BOM or NUL-padded ASCII), if any."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32-LE" if head[0] == 0xFF else "UTF-32-BE"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16-LE" if head[0] == 0xFF else "UTF-16-BE"
    if len(head) < 4:
        return None
    if head[:3] == b"\x00\x00\x00" and head[3]:
        return "UTF-32-BE"
    if head[0] and head[1:4] == b"\x00\x00\x00":
        return "UTF-32-LE"
    if head[0] == 0 == head[2] and head[1] and head[3]:
        return "UTF-16-BE"
    if head[1] == 0 == head[3] and head[0] and head[2]:
        return "UTF-16-LE"
    return None

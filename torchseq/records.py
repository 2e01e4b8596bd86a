"""Normalise the pair formats people actually have into one record model.

A record is a dict ``{"anchor": str, "positive": str}`` with optional
``"negatives": [str, ...]``, optional ``"guid"``/``"dataset"``, and any extra
fields passed through untouched. Accepted inputs, detected per line:

* a JSON list ``["a", "p"]`` or ``["a", "p", "n1", ...]``;
* ``{"texts": [...], "guid": ...}`` (same positional meaning as a list);
* ``{"query": ..., "pos": [...], "neg": [...]}`` -- the first positive and all
  negatives; the candidate lists are kept as ``"positives"``/``"negatives"``;
* ``{"set": [...]}`` -- a set of paraphrases: the first two become the pair and
  the whole set is kept under ``"set"``;
* ``{"anchor": ..., "positive": ..., "negatives"?: [...]}`` (already normalised);
* any dict, through a ``fields`` mapping such as
  ``{"anchor": "question", "positive": "answer"}``.

Functions raise :class:`RecordFormatError` with a short reason; readers add the
place (``path:line:``) in front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchseq.errors import ConfigError

Record = dict[str, Any]

TEXT_FIELDS = ("anchor", "positive", "negatives")


class RecordFormatError(Exception):
    """Internal: why a decoded value is not a valid record.

    ``place`` is set when the decoder knows a more precise place than the
    reader's (a tar member: ``shard.tar::KEY.json``); readers put the place in
    front of the message.
    """

    def __init__(self, message: str, reason: str, place: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.place = place


def _text(value: Any, name: str) -> str:
    if type(value) is not str:
        raise RecordFormatError(
            f"field {name!r} must be a string, got {type(value).__name__}", "wrong type"
        )
    if not value.strip():
        raise RecordFormatError(f"field {name!r} is an empty string", "empty text")
    return value


def _texts(values: Any, name: str) -> list[str]:
    if not isinstance(values, list):
        raise RecordFormatError(
            f"field {name!r} must be a list of strings, got {type(values).__name__}", "wrong type"
        )
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _from_list(texts: list[Any], where: str) -> Record:
    if len(texts) < 2:
        raise RecordFormatError(
            f"{where} needs at least 2 texts (anchor, positive), got {len(texts)}",
            "missing field",
        )
    record: Record = {
        "anchor": _text(texts[0], f"{where}[0]"),
        "positive": _text(texts[1], f"{where}[1]"),
    }
    if len(texts) > 2:
        record["negatives"] = [_text(t, f"{where}[{i}]") for i, t in enumerate(texts[2:], 2)]
    return record


def _passthrough(obj: Mapping[str, Any], used: tuple[str, ...], record: Record) -> Record:
    for key, value in obj.items():
        if key not in used and key not in record:
            record[key] = value
    return record


def check_fields(fields: Mapping[str, str] | None) -> dict[str, str] | None:
    """Validate a user ``fields`` mapping (record field -> source key)."""
    if fields is None:
        return None
    fields = dict(fields)
    unknown = set(fields) - set(TEXT_FIELDS) - {"guid", "dataset"}
    if unknown:
        raise ConfigError(
            f"fields: unknown target(s) {sorted(unknown)}; targets are "
            f"{list(TEXT_FIELDS) + ['guid', 'dataset']}"
        )
    missing = {"anchor", "positive"} - set(fields)
    if missing:
        raise ConfigError(f"fields: mapping must name {sorted(missing)}")
    return fields


FORMATS = ("list", "fields", "anchor/positive", "texts", "query/pos/neg", "set")


def detect_format(obj: Any, fields: Mapping[str, str] | None = None) -> str | None:
    """Which of :data:`FORMATS` ``obj`` is in (``None``: none of them).

    This is the single dispatch rule :func:`normalize` follows.
    """
    if type(obj) is list:
        return "list"
    if not isinstance(obj, dict):
        return None
    if fields is not None:
        return "fields"
    if "anchor" in obj and "positive" in obj:
        return "anchor/positive"
    if "texts" in obj:
        return "texts"
    if "query" in obj and "pos" in obj:
        return "query/pos/neg"
    if "set" in obj:
        return "set"
    return None


def _from_fields(obj: dict[str, Any], fields: Mapping[str, str]) -> Record:
    record: Record = {}
    for target, key in fields.items():
        if key not in obj:
            raise RecordFormatError(f"missing field {key!r} (mapped to {target!r})", "missing field")
        value = obj[key]
        if target == "negatives":
            record[target] = _texts(value, key)
        elif target in ("anchor", "positive"):
            record[target] = _text(value, key)
        else:
            record[target] = value
    return _passthrough(obj, tuple(fields.values()), record)


def _from_anchor_positive(obj: dict[str, Any]) -> Record:
    record: Record = {
        "anchor": _text(obj["anchor"], "anchor"),
        "positive": _text(obj["positive"], "positive"),
    }
    if "negatives" in obj:
        record["negatives"] = _texts(obj["negatives"], "negatives")
    return _passthrough(obj, ("anchor", "positive", "negatives"), record)


def _from_texts(obj: dict[str, Any]) -> Record:
    texts = obj["texts"]
    if not isinstance(texts, list):
        raise RecordFormatError(f"field 'texts' must be a list, got {type(texts).__name__}", "wrong type")
    return _passthrough(obj, ("texts",), _from_list(texts, "texts"))


def _from_query(obj: dict[str, Any]) -> Record:
    positives = _texts(obj["pos"], "pos")
    if not positives:
        raise RecordFormatError("field 'pos' is empty", "missing field")
    record: Record = {"anchor": _text(obj["query"], "query"), "positive": positives[0]}
    if len(positives) > 1:
        record["positives"] = positives
    negatives = _texts(obj.get("neg", []), "neg")
    if negatives:
        record["negatives"] = negatives
    return _passthrough(obj, ("query", "pos", "neg"), record)


def _from_set(obj: dict[str, Any]) -> Record:
    texts = _texts(obj["set"], "set")
    if len(texts) < 2:
        raise RecordFormatError(f"field 'set' needs at least 2 texts, got {len(texts)}", "missing field")
    record: Record = {"anchor": texts[0], "positive": texts[1], "set": texts}
    return _passthrough(obj, ("set",), record)


def normalize(obj: Any, fields: Mapping[str, str] | None = None) -> Record:
    """Turn one decoded JSON value into a record.

    Raises:
        RecordFormatError: the value is not a pair in any known format.
    """
    if type(obj) is list:  # the common case first, without the dispatch
        return _from_list(obj, "list")
    kind = detect_format(obj, fields)
    if kind == "fields":
        return _from_fields(obj, fields)  # type: ignore[arg-type]
    if kind == "anchor/positive":
        return _from_anchor_positive(obj)
    if kind == "texts":
        return _from_texts(obj)
    if kind == "query/pos/neg":
        return _from_query(obj)
    if kind == "set":
        return _from_set(obj)
    if not isinstance(obj, dict):
        raise RecordFormatError(
            f"expected a JSON list or object, got {type(obj).__name__}", "unknown format"
        )
    half = ("anchor" in obj) != ("positive" in obj)
    if half:
        missing = "positive" if "anchor" in obj else "anchor"
        raise RecordFormatError(f"missing field {missing!r}", "missing field")
    keys = sorted(obj)[:8]
    raise RecordFormatError(
        f"unknown record format (keys {keys}); pass fields={{'anchor': ..., 'positive': ...}}",
        "unknown format",
    )

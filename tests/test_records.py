"""Every line format of DESIGN §3 normalises to the record model."""

from __future__ import annotations

import pytest

import torchseq as ts
from torchseq.records import RecordFormatError, normalize


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (["a", "p"], {"anchor": "a", "positive": "p"}),
        (["a", "p", "n"], {"anchor": "a", "positive": "p", "negatives": ["n"]}),
        (["a", "p", "n1", "n2"], {"anchor": "a", "positive": "p", "negatives": ["n1", "n2"]}),
        ({"texts": ["a", "p"], "guid": "g1"}, {"anchor": "a", "positive": "p", "guid": "g1"}),
        ({"texts": ["a", "p", "n"]}, {"anchor": "a", "positive": "p", "negatives": ["n"]}),
        (
            {"query": "q", "pos": ["p1"], "neg": ["n1", "n2"]},
            {"anchor": "q", "positive": "p1", "negatives": ["n1", "n2"]},
        ),
        (
            {"query": "q", "pos": ["p1", "p2"]},
            {"anchor": "q", "positive": "p1", "positives": ["p1", "p2"]},
        ),
        ({"set": ["s1", "s2", "s3"]}, {"anchor": "s1", "positive": "s2", "set": ["s1", "s2", "s3"]}),
        (
            {"anchor": "a", "positive": "p", "negatives": ["n"], "dataset": "d", "score": 0.5},
            {"anchor": "a", "positive": "p", "negatives": ["n"], "dataset": "d", "score": 0.5},
        ),
    ],
)
def test_formats_normalise(line: object, expected: dict[str, object]) -> None:
    assert normalize(line) == expected


def test_fields_mapping_and_passthrough() -> None:
    row = {"question": "q", "answer": "a", "hard": ["x", "y"], "id": 7, "lang": "en"}
    fields = {"anchor": "question", "positive": "answer", "negatives": "hard", "guid": "id"}
    assert normalize(row, fields) == {
        "anchor": "q", "positive": "a", "negatives": ["x", "y"], "guid": 7, "lang": "en",
    }


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (["only one"], "missing field"),
        (["a", 3], "wrong type"),
        (["a", None], "wrong type"),
        (["a", "   "], "empty text"),
        ({"foo": "a", "bar": "b"}, "unknown format"),
        (42, "unknown format"),
        ({"query": "q", "pos": []}, "missing field"),
        ({"texts": "not a list"}, "wrong type"),
    ],
)
def test_bad_records_name_the_reason(line: object, reason: str) -> None:
    with pytest.raises(RecordFormatError) as info:
        normalize(line)
    assert info.value.reason == reason


def test_unknown_format_message_suggests_fields() -> None:
    with pytest.raises(RecordFormatError, match="pass fields="):
        normalize({"question": "q", "answer": "a"})


@pytest.mark.parametrize(
    "fields", [{"anchor": "q"}, {"anchor": "q", "positive": "a", "label": "x"}]
)
def test_invalid_fields_mapping_fails_at_construction(fields: dict[str, str]) -> None:
    with pytest.raises(ts.ConfigError, match="fields"):
        ts.read_jsonl("unused.jsonl", fields=fields)

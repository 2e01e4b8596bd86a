"""The bad-input matrix: every kind of broken input, through DataLoader workers 0 and 2, with each JSON parser.

For each case, next to good shards:

* ``on_error="raise"``: a ``TorchseqError`` subclass (and the right builtin)
  whose message starts with the place (``path:line:`` / ``shard::member:``),
  says what was wrong, and what to do;
* ``on_error="skip"``: every valid record arrives exactly once, the skips are
  counted by reason in ``pipe.stats()``, and the skipped places are listed.

The expectations do not depend on the JSON parser (orjson or the standard
library): every case runs with both, and a test compares what they deliver
and report record for record.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import anchor_index, pair
from tests.support.badinput import (
    JSON_PARSERS,
    NO_ORJSON,
    base256_size,
    claim_size,
    gzip_bytes,
    json_parser,
    jsonl_bytes,
    member_offsets,
    octal_size,
    pax_lie,
    recoverable_lines,
    tar_sample,
    write_good_tar,
    write_tar,
)
from torchseq.errors import (
    ConfigError,
    CorruptShardError,
    DataError,
    DataWarning,
    ShardNotFoundError,
    TooManyErrorsError,
    TorchseqError,
    UnknownFormatError,
    UnsafeContentError,
)


@dataclass
class Case:
    reader: Callable[..., ts.Pipeline]
    spec: list[str]
    expected: list[int]  # ids of the valid records, each to arrive exactly once
    error: type[Exception]  # what on_error="raise" raises
    place: str  # the message starts with f"{place}:"
    what: str  # ... says what was wrong
    advice: str  # ... and what to do
    reasons: dict[str, int]  # skip counts by reason
    kwargs: dict[str, Any] = field(default_factory=dict)


def _good(tmp: Path, name: str, ids: range) -> str:
    path = tmp / name
    path.write_bytes(gzip_bytes(jsonl_bytes(ids)))
    return str(path)


def _with_line(tmp: Path, line: bytes, name: str = "bad.jsonl") -> tuple[str, list[int]]:
    """A plain shard: good lines 100..104, the bad line (line 4), good lines 105..109."""
    path = tmp / name
    path.write_bytes(jsonl_bytes(range(100, 103)) + line + b"\n" + jsonl_bytes(range(103, 110)))
    return str(path), list(range(100, 110))


def _line_case(tmp: Path, line: bytes, what: str, advice: str, reason: str, **kwargs: Any) -> Case:
    bad, ids = _with_line(tmp, line)
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [good, bad], list(range(40)) + ids, DataError, f"{bad}:4", what,
                advice, {reason: 1}, kwargs)


def case_truncated_gzip(tmp: Path) -> Case:
    full = gzip_bytes(jsonl_bytes(range(100, 300)))
    cut = full[: len(full) * 3 // 5]
    bad = tmp / "truncated.jsonl.gz"
    bad.write_bytes(cut)
    complete = recoverable_lines(cut)
    survivors = [anchor_index(json.loads(line)[0]) for line in complete]
    assert 0 < len(survivors) < 200
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [str(bad), good], survivors + list(range(40)), CorruptShardError,
                f"{bad}:{len(survivors) + 1}", "truncated or corrupt compressed stream",
                "re-write or re-download", {"corrupt shard": 1})


def case_garbage_shard(tmp: Path) -> Case:
    bad = tmp / "garbage.jsonl.gz"
    bad.write_bytes(random.Random(0).randbytes(5000))
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [good, str(bad)], list(range(40)), CorruptShardError, str(bad),
                "corrupt compressed stream: the suffix says gzip", "corrupt or misnamed", {"corrupt shard": 1})


def case_garbage_line(tmp: Path) -> Case:
    return _line_case(tmp, b"\x00\x9c\xff binary \xfe\x01 junk", "invalid UTF-8", "re-encode",
                      "invalid utf-8")


def case_malformed_json(tmp: Path) -> Case:
    return _line_case(tmp, b'{"anchor": "a", "positive": ', "invalid JSON", "fix or remove",
                      "invalid json")


def case_number_for_text(tmp: Path) -> Case:
    return _line_case(tmp, b'[42, "a positive"]', "must be a string, got int", "JSON strings",
                      "wrong type")


def case_null_for_text(tmp: Path) -> Case:
    return _line_case(tmp, b'{"anchor": null, "positive": "p"}', "must be a string, got NoneType",
                      "JSON strings", "wrong type")


def case_missing_field(tmp: Path) -> Case:
    return _line_case(tmp, b'{"anchor": "only an anchor"}', "missing field 'positive'",
                      "fields=", "missing field")


def case_too_few_texts(tmp: Path) -> Case:
    return _line_case(tmp, b'["a lonely anchor"]', "at least 2 texts", "fields=", "missing field")


def case_empty_string(tmp: Path) -> Case:
    return _line_case(tmp, b'["   ", "positive"]', "empty string", "drop records", "empty text")


def case_invalid_utf8(tmp: Path) -> Case:
    return _line_case(tmp, '["caf\u00e9 au lait", "coffee"]'.encode("latin-1"), "invalid UTF-8",
                      "re-encode", "invalid utf-8")


def case_lone_surrogate_escape(tmp: Path) -> Case:
    # Valid JSON syntax, but no text: the standard library decodes it to a str
    # that no tokenizer (nor UTF-8 encoder) accepts.
    return _line_case(tmp, b'["query 998 caf\\udc80", "coffee"]', "lone surrogate", "re-encode",
                      "invalid utf-8")


def case_surrogate_bytes(tmp: Path) -> Case:
    line = '["query 998 caf\udc80", "coffee"]'.encode("utf-8", "surrogatepass")  # CESU-8 / WTF-8
    return _line_case(tmp, line, "invalid UTF-8 at byte 15", "re-encode", "invalid utf-8")


def case_nan_number(tmp: Path) -> Case:
    return _line_case(tmp, b'{"anchor": "query 997 x", "positive": "p", "score": NaN}', "invalid JSON",
                      "fix or remove", "invalid json")


def case_number_too_large_for_a_float(tmp: Path) -> Case:
    return _line_case(tmp, b'{"anchor": "query 997 x", "positive": "p", "score": 1e400}', "invalid JSON",
                      "fix or remove", "invalid json")


def case_nested_too_deeply(tmp: Path) -> Case:
    line = b'{"anchor": "query 997 x", "positive": "p", "deep": ' + b"[" * 1024 + b"]" * 1024 + b"}"
    return _line_case(tmp, line, "nested too deeply", "fix or remove", "invalid json")


def _utf16_case(tmp: Path, name: str, encoding: str, bom: bytes, what: str) -> Case:
    data = bom + jsonl_bytes(range(100, 110)).decode().encode(encoding)
    bad = tmp / name
    bad.write_bytes(gzip_bytes(data) if name.endswith(".gz") else data)
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [good, str(bad)], list(range(40)), UnknownFormatError, str(bad), what,
                "re-encode it as UTF-8", {"unknown shard format": 1})


def case_utf16_le_file(tmp: Path) -> Case:
    return _utf16_case(tmp, "utf16.jsonl", "utf-16-le", b"\xff\xfe", "is UTF-16-LE text, not UTF-8")


def case_utf16_be_file_without_bom(tmp: Path) -> Case:
    return _utf16_case(tmp, "utf16be.jsonl.gz", "utf-16-be", b"", "is UTF-16-BE text, not UTF-8")


def case_utf32_file(tmp: Path) -> Case:
    return _utf16_case(tmp, "utf32.jsonl", "utf-32-le", b"\xff\xfe\x00\x00", "is UTF-32-LE text, not UTF-8")


def case_unknown_record_format(tmp: Path) -> Case:
    return _line_case(tmp, b'{"question": "q", "answer": "a"}', "unknown record format (keys",
                      "fields=", "unknown format")


def case_huge_line(tmp: Path) -> Case:
    line = json.dumps(["x" * 50_000, "y"]).encode()
    return _line_case(tmp, line, "exceeds max_record_bytes=2000", "raise max_record_bytes",
                      "record too large", max_record_bytes=2000)


def case_missing_file(tmp: Path) -> Case:
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    gone = str(tmp / "gone.jsonl.gz")
    other = _good(tmp, "other.jsonl.gz", range(40, 60))
    return Case(ts.read_jsonl, [good, gone, other], list(range(60)), ShardNotFoundError, gone,
                "shard not found", "check the path", {"missing shard": 1})


def case_zero_byte_gzip_shard(tmp: Path) -> Case:
    empty = tmp / "empty.jsonl.gz"
    empty.write_bytes(b"")
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [str(empty), good], list(range(40)), CorruptShardError, str(empty),
                "empty file (0 bytes)", "truncated: re-write or re-download", {"corrupt shard": 1})


def case_tar_given_to_jsonl(tmp: Path) -> Case:
    tar = write_good_tar(tmp / "shard.tar", range(500, 510))
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [good, tar], list(range(40)), UnknownFormatError, tar,
                "is a tar archive, not JSON Lines", "read it with read_webdataset",
                {"unknown shard format": 1})


def case_parquet_given_to_jsonl(tmp: Path) -> Case:
    fake = tmp / "data.parquet"
    fake.write_bytes(b"PAR1" + bytes(200) + b"PAR1")
    good = _good(tmp, "good.jsonl.gz", range(0, 40))
    return Case(ts.read_jsonl, [good, str(fake)], list(range(40)), UnknownFormatError, str(fake),
                "is a Parquet file", "convert it", {"unknown shard format": 1})


# ------------------------------------------------------------------ tar cases
def _tars(tmp: Path, bad_samples: list[dict[str, bytes]], name: str = "bad.tar") -> tuple[str, str]:
    good = write_good_tar(tmp / "good.tar", range(0, 30))
    bad = write_tar(tmp / name, bad_samples)
    return good, bad


def case_tar_corrupt_member(tmp: Path) -> Case:
    samples = [tar_sample(i) for i in range(100, 110)]
    samples[4]["json"] = b'{"anchor": "x", "posi'
    good, bad = _tars(tmp, samples)
    ids = [i for i in range(100, 110) if i != 104]
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + ids, DataError,
                f"{bad}::000104.json", "invalid JSON", "fix or remove", {"invalid json": 1})


def case_tar_truncated(tmp: Path) -> Case:
    good, bad = _tars(tmp, [tar_sample(i) for i in range(100, 120)])
    name, _, data = member_offsets(bad)[12]
    data_bytes = Path(bad).read_bytes()
    Path(bad).write_bytes(data_bytes[: data + 10])  # cut inside sample 112's member
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + list(range(100, 112)),
                CorruptShardError, f"{bad}::{name}", "the archive holds only 10 more", "re-write or re-download",
                {"corrupt shard": 1})


def case_tar_gz_truncated(tmp: Path) -> Case:
    good, plain = _tars(tmp, [tar_sample(i) for i in range(100, 120)])
    name, _, data = member_offsets(plain)[12]
    bad = tmp / "bad.tar.gz"
    bad.write_bytes(gzip_bytes(Path(plain).read_bytes()[: data + 10]))  # a complete gzip of a cut tar
    return Case(ts.read_webdataset, [good, str(bad)], list(range(30)) + list(range(100, 112)),
                CorruptShardError, f"{bad}::{name}", "the archive holds only 10 more", "re-write or re-download",
                {"corrupt shard": 1})


def case_tar_truncated_at_boundary(tmp: Path) -> Case:
    good, bad = _tars(tmp, [tar_sample(i) for i in range(100, 120)])
    name, header, _ = member_offsets(bad)[12]
    Path(bad).write_bytes(Path(bad).read_bytes()[:header])  # cut right before sample 112
    # tarfile alone would end quietly here; sample 111 is not known to be complete.
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + list(range(100, 111)),
                CorruptShardError, f"{bad}::000111.json", "truncated tar", "re-write or re-download",
                {"corrupt shard": 1})


def case_tar_corrupt_header(tmp: Path) -> Case:
    good, bad = _tars(tmp, [tar_sample(i) for i in range(100, 120)])
    _, header, _ = member_offsets(bad)[12]
    data = bytearray(Path(bad).read_bytes())
    data[header + 148 : header + 156] = b"garbage!"  # the checksum field
    Path(bad).write_bytes(bytes(data))
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + list(range(100, 111)),
                CorruptShardError, f"{bad}::(header at byte {header})", "corrupt tar header",
                "re-write or re-download", {"corrupt shard": 1})


def case_tar_pickle_member(tmp: Path) -> Case:
    samples = [tar_sample(i) for i in range(100, 110)]
    samples[2]["extra.pyd"] = b"\x80\x04\x95 not really a pickle"
    good, bad = _tars(tmp, samples)
    ids = [i for i in range(100, 110) if i != 102]
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + ids, DataError,
                f"{bad}::000102.extra.pyd", "pickle member refused", "without pickles",
                {"unsafe content": 1})


def case_tar_invalid_utf8_txt(tmp: Path) -> Case:
    samples = [tar_sample(i) for i in range(100, 110)]
    samples[5] = {"__key__": "000105", "anchor.txt": b"caf\xe9", "positive.txt": b"coffee"}
    good, bad = _tars(tmp, samples)
    ids = [i for i in range(100, 110) if i != 105]
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + ids, DataError,
                f"{bad}::000105.anchor.txt", "invalid UTF-8", "re-encode", {"invalid utf-8": 1})


def case_tar_huge_sample(tmp: Path) -> Case:
    samples = [tar_sample(i) for i in range(100, 110)]
    samples[3]["notes.txt"] = b"z" * 100_000
    good, bad = _tars(tmp, samples)
    ids = [i for i in range(100, 110) if i != 103]
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + ids, DataError,
                f"{bad}::000103.notes.txt", "exceeds max_record_bytes=4096", "raise max_record_bytes",
                {"record too large": 1}, {"max_record_bytes": 4096})


def case_tar_header_claims_more_than_the_file(tmp: Path) -> Case:
    good, bad = _tars(tmp, [tar_sample(i) for i in range(100, 110)])
    claim_size(bad, 4, octal_size((8 << 30) - 1))  # sample 104 claims 8 GiB - 1 bytes
    return Case(ts.read_webdataset, [good, bad], list(range(30)) + list(range(100, 104)), CorruptShardError,
                f"{bad}::000104.json", "the header claims 8,589,934,591 bytes", "re-write or re-download",
                {"corrupt shard": 1})


def case_tar_gz_pax_header_claims_a_terabyte(tmp: Path) -> Case:
    good = write_good_tar(tmp / "good.tar", range(0, 30))
    bad = tmp / "bad.tar.gz"
    bad.write_bytes(gzip_bytes(pax_lie([tar_sample(i) for i in range(100, 104)], "000104.json", 10**12)))
    return Case(ts.read_webdataset, [good, str(bad)], list(range(30)) + list(range(100, 104)),
                CorruptShardError, f"{bad}::000104.json", "the header claims 1,000,000,000,000 bytes",
                "re-write or re-download", {"corrupt shard": 1})


def case_zero_byte_tar(tmp: Path) -> Case:
    good = write_good_tar(tmp / "good.tar", range(0, 30))
    bad = tmp / "bad.tar"
    bad.write_bytes(b"")
    return Case(ts.read_webdataset, [str(bad), good], list(range(30)), CorruptShardError, str(bad),
                "empty file (0 bytes)", "truncated: re-write or re-download", {"corrupt shard": 1})


def case_jsonl_given_to_webdataset(tmp: Path) -> Case:
    good = write_good_tar(tmp / "good.tar", range(0, 30))
    jsonl = _good(tmp, "pairs.jsonl.gz", range(100, 110))
    return Case(ts.read_webdataset, [good, jsonl], list(range(30)), UnknownFormatError, jsonl,
                "looks like JSON Lines", "read it with read_jsonl", {"unknown shard format": 1})


def case_garbage_tar(tmp: Path) -> Case:
    good = write_good_tar(tmp / "good.tar", range(0, 30))
    junk = tmp / "junk.tar"
    junk.write_bytes(random.Random(1).randbytes(3000))
    return Case(ts.read_webdataset, [str(junk), good], list(range(30)), UnknownFormatError,
                str(junk), "is not a tar archive", "WebDataset .tar shards", {"unknown shard format": 1})


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}


def original_message(exc: BaseException, num_workers: int) -> str:
    """The message the reader raised; DataLoader wraps it in a traceback when it crosses processes."""
    text = str(exc)
    if num_workers == 0:
        return text
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no original message in: {text}"
    return lines[-1][len(prefix):]


def run(pipe: ts.Pipeline, num_workers: int) -> list[int]:
    """Anchor ids of every record the loader delivers."""
    iterator = iter(DataLoader(pipe, batch_size=None, num_workers=num_workers))
    delivered = []
    try:
        for record in iterator:
            delivered.append(anchor_index(record["anchor"]))
    except Exception as exc:
        # The traceback holds the loader iterator; collected later by gc, torch
        # takes 10 s to stop its workers. Drop it now, while the workers can exit.
        exc.__traceback__ = None
        del iterator
        raise
    return delivered


@pytest.mark.parametrize("parser", JSON_PARSERS)
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_matrix(name: str, num_workers: int, parser: str, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)

    pipe = case.reader(case.spec, on_error="raise", **case.kwargs)
    with json_parser(parser), pytest.raises(case.error) as info:
        run(pipe, num_workers)
    assert isinstance(info.value, TorchseqError)
    message = original_message(info.value, num_workers)
    assert message.startswith(f"{case.place}: "), message
    assert case.what in message, message
    assert case.advice in message, message

    pipe = case.reader(case.spec, on_error="skip", **case.kwargs)
    with json_parser(parser):
        delivered = run(pipe, num_workers)
    counts = Counter(delivered)
    assert sorted(counts) == sorted(case.expected), f"lost {set(case.expected) - set(counts)}"
    assert max(counts.values()) == 1, f"duplicated {[i for i, n in counts.items() if n > 1]}"
    stats = pipe.stats()
    assert stats.skipped == case.reasons
    assert stats.records == len(case.expected)
    assert Counter(e.reason for e in stats.errors) == Counter(case.reasons)
    assert all(e.place == case.place for e in stats.errors)


def _outcome(pipe: ts.Pipeline, parser: str) -> tuple[list[Any], Any, list[Any], dict[str, int]]:
    """Everything a skip-mode read shows: the records, in order, and the full report."""
    with json_parser(parser):
        delivered = list(pipe)
    stats = pipe.stats()
    return delivered, stats.records, [tuple(e) for e in stats.errors], stats.skipped


@NO_ORJSON
@pytest.mark.parametrize("name", sorted(CASES))
def test_json_parsers_agree_on_the_matrix(name: str, tmp_path: Path) -> None:
    """orjson and the standard library deliver the same records and report the same skips, word for word."""
    case = CASES[name](tmp_path)
    stdlib = _outcome(case.reader(case.spec, on_error="skip", **case.kwargs), "json")
    assert _outcome(case.reader(case.spec, on_error="skip", **case.kwargs), "orjson") == stdlib


# Lines where JSON parsers commonly differ: each is read by both, alone between two good lines.
TRICKY_LINES = {
    "bom": b'\xef\xbb\xbf["query 1 x", "p"]',
    "bom only": b"\xef\xbb\xbf",
    "bom inside": b'["query 1 x", \xef\xbb\xbf"p"]',
    "lone high surrogate": b'["query 1 \\ud800", "p"]',
    "lone low surrogate in a key": b'{"anchor": "query 1 x", "positive": "p", "\\udfff": 1}',
    "reversed pair": b'["query 1 \\ude00\\ud83d", "p"]',
    "pair": b'["query 1 \\ud83d\\ude00", "p"]',
    "split pair": b'["query 1 \\ud83d", "\\ude00 p"]',
    "escaped backslash before u": b'["query 1 \\\\ud800", "p"]',
    "surrogate bytes": b'["query 1 \xed\xa0\x80", "p"]',
    "overlong utf-8": b'["query 1 \xc0\xaf", "p"]',
    "beyond U+10FFFF": b'["query 1 \xf4\x90\x80\x80", "p"]',
    "noncharacter": '["query 1 \uffff", "p"]'.encode(),
    "line separator": '["query 1 \u2028", "p"]'.encode(),
    "escaped nul": b'["query 1 \\u0000", "p"]',
    "raw control character": b'["query 1 \x01", "p"]',
    "raw tab": b'["query 1 \t", "p"]',
    "raw DEL": b'["query 1 \x7f", "p"]',
    "nan": b'{"anchor": "query 1 x", "positive": "p", "s": NaN}',
    "infinity": b'{"anchor": "query 1 x", "positive": "p", "s": -Infinity}',
    "float overflow": b'{"anchor": "query 1 x", "positive": "p", "s": 1e309}',
    "float underflow": b'{"anchor": "query 1 x", "positive": "p", "s": 1e-400}',
    "int64 min": b'{"anchor": "query 1 x", "positive": "p", "s": -9223372036854775808}',
    "below int64": b'{"anchor": "query 1 x", "positive": "p", "s": -9223372036854775809}',
    "uint64 max": b'{"anchor": "query 1 x", "positive": "p", "s": 18446744073709551615}',
    "beyond uint64": b'{"anchor": "query 1 x", "positive": "p", "s": 18446744073709551616}',
    "400 digits": b'{"anchor": "query 1 x", "positive": "p", "s": ' + b"9" * 400 + b"}",
    "5000 digits": b'{"anchor": "query 1 x", "positive": "p", "s": ' + b"9" * 5000 + b"}",
    "leading zero": b'{"anchor": "query 1 x", "positive": "p", "s": 01}',
    "trailing comma": b'["query 1 x", "p",]',
    "trailing garbage": b'["query 1 x", "p"] x',
    "two values": b'["query 1 x", "p"] ["query 2 x", "p"]',
    "duplicate keys": b'{"anchor": "query 1 x", "anchor": "query 2 x", "positive": "p"}',
    "depth 990": b'["query 1 x", "p", ' + b"[" * 989 + b"]" * 989 + b"]",
    "depth 1024": b'["query 1 x", "p", ' + b"[" * 1023 + b"]" * 1023 + b"]",
    "depth 1025": b'["query 1 x", "p", ' + b"[" * 1024 + b"]" * 1024 + b"]",
    "depth 1024 of objects": b'{"a": ' * 1023 + b'["query 1 x", "p"]' + b"}" * 1023,
    "brackets in strings": b'["query 1 ' + b"[" * 2000 + b'", "p"]',
    "utf-16-be": '["query 1 x", "p"]'.encode("utf-16-be"),
    "utf-16 with bom": '["query 1 x", "p"]'.encode("utf-16"),
    "form feed": b'\x0c["query 1 x", "p"]',
    "no-break space": '\u00a0["query 1 x", "p"]'.encode(),
}


@NO_ORJSON
@pytest.mark.parametrize("name", sorted(TRICKY_LINES))
def test_json_parsers_agree_on_tricky_lines(name: str, tmp_path: Path) -> None:
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(b'["query 0 x", "p"]\n' + TRICKY_LINES[name] + b'\n["query 9 x", "p"]\n')
    stdlib = _outcome(ts.read_jsonl(str(path), on_error="skip"), "json")
    assert _outcome(ts.read_jsonl(str(path), on_error="skip"), "orjson") == stdlib


@pytest.mark.parametrize("parser", JSON_PARSERS)
def test_numbers_follow_one_rule(parser: str, tmp_path: Path) -> None:
    """Integers in the 64-bit range stay exact, larger ones become floats (orjson's rule), a number
    too large for a float and NaN / Infinity are invalid JSON."""
    values = [b"-9223372036854775808", b"18446744073709551615", b"18446744073709551616",
              b"-9223372036854775809", b"1.5", b"1e-400", b"1e309", b"NaN", b"Infinity", b"9" * 400]
    path = tmp_path / "numbers.jsonl"
    path.write_bytes(b"".join(b'{"anchor": "query %d x", "positive": "p", "s": %s}\n' % (i, v)
                              for i, v in enumerate(values)))
    pipe = ts.read_jsonl(str(path), on_error="skip")
    with json_parser(parser):
        scores = [r["s"] for r in pipe]
    assert scores == [-(2**63), 2**64 - 1, float(2**64), float(-(2**63) - 1), 1.5, 0.0]
    assert [type(s) for s in scores] == [int, int, float, float, float, float]
    assert pipe.stats().skipped == {"invalid json": 4}


@pytest.mark.parametrize("parser", JSON_PARSERS)
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_utf8_byte_order_marks_are_ignored(parser: str, suffix: str, tmp_path: Path) -> None:
    """A UTF-8 BOM before the JSON of a line (a file written by a Windows editor, or files with BOMs
    concatenated) or of a tar member is ignored, as by ``json.loads(bytes)``; one inside is invalid."""
    bom = b"\xef\xbb\xbf"
    lines = [bom + jsonl_bytes(range(0, 3)), jsonl_bytes(range(3, 5)), bom + jsonl_bytes(range(5, 7)),
             bom + b"\n", b'["query 99 x", ' + bom + b'"p"]\n']
    path = tmp_path / f"bom{suffix}"
    data = b"".join(lines)
    path.write_bytes(gzip_bytes(data) if suffix.endswith(".gz") else data)
    pipe = ts.read_jsonl(str(path), on_error="skip")
    with json_parser(parser):
        assert [anchor_index(r["anchor"]) for r in pipe] == list(range(7))
    assert pipe.stats().skipped == {"invalid json": 1}
    assert [e.place for e in pipe.stats().errors] == [f"{path}:9"]

    samples = [tar_sample(i) for i in range(3)]
    samples[1]["json"] = bom + samples[1]["json"]
    samples[2] = {"__key__": "000002", "anchor.txt": bom + b"query 2 x", "positive.txt": b"p"}
    tar = write_tar(tmp_path / "bom.tar", samples)
    with json_parser(parser):
        assert [r["anchor"] for r in ts.read_webdataset(tar)] == [pair(0)[0], pair(1)[0], "query 2 x"]

    samples[2]["anchor.txt"] = bom + b"caf\xe9"  # the offset counts the BOM's bytes
    tar = write_tar(tmp_path / "bom-bad.tar", samples)
    with pytest.raises(DataError, match=r"bom-bad\.tar::000002\.anchor\.txt: invalid UTF-8 at byte 6;"):
        list(ts.read_webdataset(tar))


@pytest.mark.parametrize("parser", JSON_PARSERS)
def test_blank_lines_of_any_length_are_skipped(parser: str, tmp_path: Path) -> None:
    """Lines of JSON whitespace only (space, tab, CR) are skipped alike, however long; not counted."""
    blanks = [b"", b" ", b"\t", b"\r", b"    ", b" \t \r", b" " * 300, b"\t" * 5000, b"\r\r\r\r"]
    path = tmp_path / "blanks.jsonl"
    path.write_bytes(b"".join(jsonl_bytes([i]) + blank + b"\n" for i, blank in enumerate(blanks)))
    pipe = ts.read_jsonl(str(path), max_record_bytes=1024)
    with json_parser(parser):
        assert [anchor_index(r["anchor"]) for r in pipe] == list(range(len(blanks)))
    assert pipe.stats().skipped == {}
    assert len(pipe) == len(blanks)


@pytest.mark.parametrize("parser", JSON_PARSERS)
def test_a_lone_surrogate_never_reaches_the_tokenizer(parser: str, tokenizer_file: str, tmp_path: Path) -> None:
    case = case_lone_surrogate_escape(tmp_path)
    pipe = ts.read_jsonl(case.spec, on_error="skip").tokenize(tokenizer_file, max_length=16)
    with json_parser(parser):
        tokenized = list(pipe)
    assert len(tokenized) == len(case.expected)
    assert all(len(r["tokens"]["anchor"]) <= 16 for r in tokenized)
    assert pipe.stats().skipped == {"invalid utf-8": 1}


@pytest.mark.parametrize("member", ["X.PYD", "extra.Pickle", "extra.pickle.gz", "extra.PKL.ZST", "extra.pth",
                                    "model.pt", "extra.pyd.bz2", "pkl"])
def test_pickle_members_are_refused_in_any_spelling(member: str, tmp_path: Path) -> None:
    samples = [tar_sample(i) for i in range(100, 106)]
    samples[2][member] = b"\x80\x04\x95 not really a pickle"
    bad = write_tar(tmp_path / "bad.tar", samples)
    with pytest.raises(DataError, match="pickle member refused") as info:
        list(ts.read_webdataset(bad))
    assert str(info.value).startswith(f"{bad}::000102.{member}: ")
    pipe = ts.read_webdataset(bad, on_error="skip")
    assert [anchor_index(r["anchor"]) for r in pipe] == [100, 101, 103, 104, 105]
    assert pipe.stats().skipped == {"unsafe content": 1}


def _local_lie(tmp: Path, field: bytes) -> str:
    bad = write_tar(tmp / "lie.tar", [tar_sample(i) for i in range(100, 104)])
    return claim_size(bad, 2, field)  # the header of sample 102


def _pax_lie(tmp: Path, name: str) -> str:
    data = pax_lie([tar_sample(i) for i in range(100, 102)], "000102.json", 10**12)
    path = tmp / name
    path.write_bytes(gzip_bytes(data) if name.endswith(".gz") else data)
    return str(path)


LIES = {
    "local tar, ustar size of 8 GiB": (lambda tmp: _local_lie(tmp, octal_size((8 << 30) - 1)), "8,589,934,591"),
    "local tar, base-256 size of 1 TB": (lambda tmp: _local_lie(tmp, base256_size(10**12)), "1,000,000,000,000"),
    "local tar, pax size of 1 TB": (lambda tmp: _pax_lie(tmp, "lie.tar"), "1,000,000,000,000"),
    "tar.gz, pax size of 1 TB": (lambda tmp: _pax_lie(tmp, "lie.tar.gz"), "1,000,000,000,000"),
}


@pytest.mark.parametrize("limit", [1 << 20, 1 << 50])
@pytest.mark.parametrize("name", sorted(LIES))
def test_a_lying_tar_header_is_refused_at_once(name: str, limit: int, tmp_path: Path) -> None:
    """A member claiming more bytes than exist: a CorruptShardError naming it, without reading or
    allocating what it claims (also when the limit would allow it), in well under a second."""
    make, claimed = LIES[name]
    bad = make(tmp_path)
    assert os.path.getsize(bad) <= 10240
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(CorruptShardError) as info:
            list(ts.read_webdataset(bad, max_record_bytes=limit))
        pipe = ts.read_webdataset(bad, max_record_bytes=limit, on_error="skip")
        delivered = [anchor_index(r["anchor"]) for r in pipe]
        elapsed = time.monotonic() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    expected = f"{bad}::000102.json: corrupt or truncated tar: the header claims {claimed} bytes"
    assert message.startswith(expected), message
    assert "the 2 sample(s) before it were read" in message and "re-write or re-download" in message
    assert delivered == [100, 101]
    assert pipe.stats().skipped == {"corrupt shard": 1}
    assert elapsed < 5, f"{elapsed:.1f} s"  # a hang guard: it takes milliseconds
    assert peak < 8 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_huge_tar_member_is_never_held_whole(suffix: str, tmp_path: Path) -> None:
    """A 64 MiB member under a 1 MiB limit is skipped (counted) without being read into memory."""
    samples = [tar_sample(i) for i in range(100, 104)]
    samples[1]["notes.txt"] = b"z" * (64 << 20)
    path = Path(write_tar(tmp_path / "huge.tar", samples))
    if suffix == ".tar.gz":
        path = path.with_suffix(".tar.gz")
        path.write_bytes(gzip.compress((tmp_path / "huge.tar").read_bytes(), compresslevel=1, mtime=0))
    pipe = ts.read_webdataset(str(path), on_error="skip", max_record_bytes=1 << 20)
    tracemalloc.start()
    try:
        delivered = [anchor_index(r["anchor"]) for r in pipe]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert delivered == [100, 102, 103]
    assert pipe.stats().skipped == {"record too large": 1}
    assert peak < 8 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_zero_record_shards_are_valid_and_counted(num_workers: int, tmp_path: Path) -> None:
    """A well-formed shard without records (gzip of nothing, blank lines, a tar with no samples)
    is not an error in any mode -- writers legitimately produce them -- but stats() counts it."""
    blank = tmp_path / "blank.jsonl.gz"
    blank.write_bytes(gzip_bytes(b"\n\n  \n"))
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_bytes(b"")
    good = _good(tmp_path, "good.jsonl.gz", range(0, 40))
    for on_error in ("raise", "skip"):
        pipe = ts.read_jsonl([str(blank), good, str(nothing)], on_error=on_error)
        assert sorted(run(pipe, num_workers)) == list(range(40))
        assert pipe.stats().empty_shards == 2 and pipe.stats().skipped == {}
    empty_tar = write_tar(tmp_path / "empty.tar", [])
    tars = [empty_tar, write_good_tar(tmp_path / "good.tar", range(30))]
    pipe = ts.read_webdataset(tars)
    assert sorted(run(pipe, num_workers)) == list(range(30))
    assert pipe.stats().empty_shards == 1


@pytest.mark.parametrize("spec", [[], ()])
def test_empty_shard_list_is_refused_when_the_reader_is_built(spec: Any) -> None:
    for on_error in ("raise", "skip", "warn"):
        with pytest.raises(ConfigError, match="empty list: nothing to read"):
            ts.read_jsonl(spec, on_error=on_error)
        with pytest.raises(ConfigError, match="empty list: nothing to read"):
            ts.read_webdataset(spec, on_error=on_error)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_glob_matching_nothing_raises_in_every_mode(num_workers: int, tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing-*.jsonl.gz")
    with pytest.raises(ShardNotFoundError) as info:
        run(ts.read_jsonl(pattern, on_error="skip"), num_workers)
    assert original_message(info.value, num_workers).startswith(f"{pattern}: glob matched no shards")


@pytest.mark.filterwarnings("ignore::torchseq.errors.RecordLevelSplitWarning")
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than cores here
@pytest.mark.parametrize("name", ["truncated_gzip", "malformed_json", "missing_file", "tar_truncated"])
def test_record_level_split_counts_each_fault_once(name: str, tmp_path: Path) -> None:
    """More workers than shards: every worker reads every shard, one reports each fault."""
    case = CASES[name](tmp_path)
    pipe = case.reader(case.spec, on_error="skip", **case.kwargs)
    delivered = run(pipe, len(case.spec) + 1)
    assert sorted(delivered) == sorted(case.expected)
    assert pipe.stats().skipped == case.reasons


def test_warn_mode_warns_once_per_skip_and_delivers_the_rest(tmp_path: Path) -> None:
    case = case_malformed_json(tmp_path)
    pipe = ts.read_jsonl(case.spec, on_error="warn")
    with pytest.warns(DataWarning, match="skipped: .*bad.jsonl:4: invalid JSON") as record:
        delivered = run(pipe, 0)
    assert len([w for w in record if w.category is DataWarning]) == 1
    assert sorted(delivered) == sorted(case.expected)
    assert pipe.stats().skipped == {"invalid json": 1}


def _mostly_garbage(tmp_path: Path, good: int, bad: int) -> str:
    lines = [json.dumps(pair(i)).encode() for i in range(good)] + [b"{oops"] * bad
    random.Random(0).shuffle(lines)
    path = tmp_path / "mostly-garbage.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_max_errors_stops_a_run_that_is_mostly_garbage(num_workers: int, tmp_path: Path) -> None:
    a = _mostly_garbage(tmp_path, 30, 70)
    b = _good(tmp_path, "good.jsonl.gz", range(1000, 1100))
    with pytest.raises(TooManyErrorsError) as info:
        run(ts.read_jsonl([a, b], on_error="skip", max_errors=10), num_workers)
    message = original_message(info.value, num_workers)
    assert message.startswith(f"{a}:")
    assert "11 skipped" in message and "max_errors=10" in message and "invalid json (11)" in message
    assert "raise max_errors" in message


def test_max_errors_tolerates_up_to_the_limit(tmp_path: Path) -> None:
    a = _mostly_garbage(tmp_path, 30, 10)
    pipe = ts.read_jsonl(a, on_error="skip", max_errors=10)
    assert len(run(pipe, 0)) == 30
    assert pipe.stats().skipped == {"invalid json": 10}


def test_max_error_rate_judges_after_enough_inputs(tmp_path: Path) -> None:
    # 40 % bad: over a 10 % rate once 1,000 inputs were seen.
    lines = [json.dumps(pair(i)).encode() if i % 5 > 1 else b"[1, 2]" for i in range(3000)]
    path = tmp_path / "forty-percent.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(TooManyErrorsError, match=r"over max_error_rate=0\.1"):
        run(ts.read_jsonl(str(path), on_error="skip", max_error_rate=0.1), 0)
    # 40 % is within a 50 % rate: the run completes (max_errors off: 1,200 are skipped).
    pipe = ts.read_jsonl(str(path), on_error="skip", max_errors=None, max_error_rate=0.5)
    assert len(run(pipe, 0)) == 1800
    assert pipe.stats().skipped == {"wrong type": 1200}


def test_max_error_rate_is_not_judged_on_a_small_run(tmp_path: Path) -> None:
    # Fewer than 1,000 inputs: only max_errors bounds the skips (a worker reading a small file
    # with a few bad lines must not stop a healthy corpus).
    a = _mostly_garbage(tmp_path, 3, 7)
    assert len(run(ts.read_jsonl(a, on_error="skip", max_error_rate=0.5), 0)) == 3
    with pytest.raises(TooManyErrorsError, match=r"more than max_errors=5"):
        run(ts.read_jsonl(a, on_error="skip", max_errors=5, max_error_rate=0.5), 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"max_errors": -1}, "max_errors must be"),
        ({"max_error_rate": 1.5}, "max_error_rate must be"),
        ({"max_record_bytes": 0}, "max_record_bytes must be"),
    ],
)
def test_invalid_reader_arguments_fail_at_once(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ts.read_jsonl("whatever.jsonl", **kwargs)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(ts.CorruptShardError, ValueError), (ts.UnknownFormatError, ValueError),
     (ts.TooManyErrorsError, ValueError), (ts.RemoteError, OSError), (ts.RemoteAccessError, PermissionError)],
)
def test_new_errors_rebuild_from_their_message(cls: type[Exception], builtin: type[Exception]) -> None:
    """DataLoader re-raises a worker's exception as ``type(exc)(message)``: one string is enough."""
    import pickle

    error = cls("s3://bucket/shard.tar::000123.json: something")
    assert isinstance(error, TorchseqError) and isinstance(error, builtin)
    assert str(type(error)(str(error))) == str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_pickle_member_is_an_unsafe_content_error_class(tmp_path: Path) -> None:
    assert issubclass(UnsafeContentError, DataError)
    case = case_tar_pickle_member(tmp_path)
    pipe = ts.read_webdataset(case.spec, on_error="skip")
    run(pipe, 0)
    assert pipe.stats().errors[0].reason == "unsafe content"


def test_huge_line_is_never_held_whole(tmp_path: Path) -> None:
    """A 64 MiB line under a 1 KiB limit: read in limit-sized pieces (peak memory stays small)."""
    import tracemalloc

    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(pair(0)).encode() + b"\n")
        f.write(b'["' + b"x" * (64 << 20) + b'", "y"]\n')
        f.write(json.dumps(pair(1)).encode() + b"\n")
    pipe = ts.read_jsonl(str(path), on_error="skip", max_record_bytes=1024)
    tracemalloc.start()
    try:
        delivered = run(pipe, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert delivered == [0, 1]
    assert pipe.stats().skipped == {"record too large": 1}
    assert peak < 8 << 20, f"peak {peak} bytes"
    assert os.path.getsize(path) > 64 << 20

"""The bad-input matrix: every kind of broken input, through DataLoader workers 0 and 2.

For each case, next to good shards:

* ``on_error="raise"``: a ``TorchseqError`` subclass (and the right builtin)
  whose message starts with the place (``path:line:`` / ``shard::member:``),
  says what was wrong, and what to do;
* ``on_error="skip"``: every valid record arrives exactly once, the skips are
  counted by reason in ``pipe.stats()``, and the skipped places are listed.
"""

from __future__ import annotations

import json
import os
import random
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
    gzip_bytes,
    jsonl_bytes,
    member_offsets,
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
                CorruptShardError, f"{bad}::{name}", "corrupt or truncated tar", "re-write or re-download",
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


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_matrix(name: str, num_workers: int, tmp_path: Path) -> None:
    case = CASES[name](tmp_path)

    pipe = case.reader(case.spec, on_error="raise", **case.kwargs)
    with pytest.raises(case.error) as info:
        run(pipe, num_workers)
    assert isinstance(info.value, TorchseqError)
    message = original_message(info.value, num_workers)
    assert message.startswith(f"{case.place}: "), message
    assert case.what in message, message
    assert case.advice in message, message

    pipe = case.reader(case.spec, on_error="skip", **case.kwargs)
    delivered = run(pipe, num_workers)
    counts = Counter(delivered)
    assert sorted(counts) == sorted(case.expected), f"lost {set(case.expected) - set(counts)}"
    assert max(counts.values()) == 1, f"duplicated {[i for i, n in counts.items() if n > 1]}"
    stats = pipe.stats()
    assert stats.skipped == case.reasons
    assert stats.records == len(case.expected)
    assert Counter(e.reason for e in stats.errors) == Counter(case.reasons)
    assert all(e.place == case.place for e in stats.errors)


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

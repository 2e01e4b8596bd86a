"""Fuzzing the JSONL and tar readers: any bytes end in records or a TorchseqError.

Hypothesis generates 10,000+ shard files in total: well-formed ones with
hostile content (wrong types, huge or empty texts, bad UTF-8, random JSON,
pickles, malformed .npy), then compressed or not, cut short, bit-flipped;
and plain random bytes. For each file:

* ``on_error="raise"`` yields records and then stops, if at all, with a
  ``TorchseqError`` -- never another exception, never a hang (the test has a
  timeout);
* ``on_error="skip"`` never raises and yields valid records only;
* what "raise" delivered before its error is exactly the start of what
  "skip" delivers (when "raise" met no error, nothing was bad and "skip"
  would run the very same code: it is not run again);
* an intact container (a well-formed gzip/tar around hostile content) never
  gives a shard-level fault;
* both JSON parsers (the standard library's and orjson, when installed)
  deliver the same records and raise or report the same errors, word for word:
  every input is read with each.

Each test counts the inputs it really ran and asserts the total.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support.badinput import (
    HAVE_ORJSON,
    base256_size,
    claim,
    json_parser,
    octal_size,
    tar_bytes_io,
)
from torchseq.context import Context
from torchseq.errors import TorchseqError
from torchseq.sources import JsonlSource, WebDatasetSource
from torchseq.sources.base import ShardSource

# Inputs (shard files) per fuzzer. A structured example checks two: the intact
# shard and a damaged copy of it.
EXAMPLES = {"jsonl_structured": 4000, "jsonl_bytes": 1000, "tar_structured": 4000, "tar_bytes": 1000}
RAN: Counter[str] = Counter()
# Two opens per input: on tmpfs they cost ~25 us, on this machine's /tmp ~450 us.
WORKDIR = Path(tempfile.mkdtemp(prefix="torchseq-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))

FUZZ = settings(
    database=None,
    phases=[Phase.generate, Phase.shrink],
    deadline=None,  # hangs are caught by the test timeout, not by timing single inputs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

# ---------------------------------------------------------------- content
# Hypothesis draws the skeleton of each file (what kind of line or member goes
# where, how it is damaged) and a seed; the content itself comes from a seeded
# random.Random, which is ~20x cheaper than drawing every character through
# Hypothesis and keeps 10,000 inputs within seconds.

CHARS = (
    "abcxyz ABC 0129 \t\r\\\"'{}[],:é漢字🙂\u0301\u200b\x00\x1f\x7f\u2028"
)


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.choice([0, 1, 3, 12, 40])))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 2**70, 1.5, -0.0, 1e308])
    if kind in (3, 4):
        return _text(rng)
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _record(rng: random.Random) -> Any:
    texts = [_text(rng) for _ in range(rng.randrange(1, 5))]
    return rng.choice([
        texts,
        {"anchor": texts[0], "positive": texts[-1]},
        {"anchor": texts[0], "positive": texts[-1], "negatives": texts},
        {"texts": texts, "guid": rng.randrange(99)},
        {"query": texts[0], "pos": texts[1:], "neg": texts[:1]},
        {"set": texts},
        {"anchor": _value(rng), "positive": texts[0]},
        {"texts": _value(rng)},
        {"query": _value(rng), "pos": _value(rng)},
        _value(rng),
    ])


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


LINE_KINDS = ("record", "record", "record", "cut", "bytes", "blank", "deep", "surrogate", "long")


def _line(kind: str, rng: random.Random) -> bytes:
    if kind == "record":
        return _dump(_record(rng))
    if kind == "cut":
        line = _dump(_record(rng))
        return line[: rng.randrange(len(line) + 1)]
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(60))).replace(b"\n", b"")
    if kind == "blank":
        return rng.choice([b"", b" ", b"\t", b"\r"])
    if kind == "deep":
        return b"[" * rng.choice([100, 3000]) + b"]" * rng.choice([0, 100])
    if kind == "surrogate":
        return b'["\\ud800 lone", "x"]'
    return _dump([_text(rng) * 50, "p"])  # long: over a 256-byte limit


COMPRESSIONS = ("none", "gzip", "bz2", "xz", "zstd")
SUFFIX = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "bz2":
        return bz2.compress(data, 1)
    if kind == "xz":
        return lzma.compress(data, preset=0)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


damage = st.tuples(
    st.sampled_from(COMPRESSIONS),
    st.sampled_from(COMPRESSIONS) | st.none(),  # the suffix: honest (None) or any
    st.none() | st.floats(0, 1),  # cut at this fraction
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),  # byte flips
)


def _damaged(data: bytes, how: tuple[str, str | None, float | None, list[tuple[float, int]]]) -> tuple[bytes, str]:
    kind, suffix_kind, cut, flips = how
    blob = _compress(kind, data)
    suffix = SUFFIX[suffix_kind or kind]
    if cut is not None:
        blob = blob[: int(len(blob) * cut)]
    if blob and flips:
        mutable = bytearray(blob)
        for where, value in flips:
            mutable[min(len(mutable) - 1, int(len(mutable) * where))] = value
        blob = bytes(mutable)
    return blob, suffix


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# A header promising 80 GB of ids: must be refused, not allocated.
HUGE_NPY = b"\x93NUMPY\x01\x00" + (70).to_bytes(2, "little") + (
    b"{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000,), }"
).ljust(69) + b"\n" + b"\x00" * 16

MEMBER_KINDS = ("json", "json", "bad json", "anchor.txt", "positive.txt", "bad txt", "negatives.json",
                "npy", "bad npy", "huge npy", "pickle", "other", "long")


def _member(kind: str, rng: random.Random) -> tuple[str, bytes]:
    if kind == "json":
        return "json", _dump(_record(rng))
    if kind == "bad json":
        return "json", _line(rng.choice(["cut", "bytes", "deep", "surrogate"]), rng)
    if kind in ("anchor.txt", "positive.txt"):
        return kind, _text(rng).encode("utf-8", "surrogatepass")
    if kind == "bad txt":
        return "anchor.txt", b"caf\xe9 \xff"
    if kind == "negatives.json":
        return kind, _dump(_value(rng))
    if kind == "npy":
        ids = [rng.randrange(30000) for _ in range(rng.randrange(20))]
        return rng.choice(["anchor.npy", "positive.npy"]), _npy(np.array(ids, dtype=np.uint16))
    if kind == "bad npy":
        good = _npy(np.arange(rng.randrange(1, 9), dtype=np.int32))
        return "anchor.npy", good[: rng.randrange(len(good))] + bytes(rng.randrange(3))
    if kind == "huge npy":
        return "positive.npy", HUGE_NPY
    if kind == "pickle":
        return rng.choice(["pyd", "extra.pickle", "pkl"]), b"\x80\x04\x95\x05"
    if kind == "long":
        return "notes.txt", b"n" * 400
    return rng.choice(["bin", "cls", "x.y.z"]), bytes(rng.randrange(256) for _ in range(5))


def _lie(tar: bytes, how: tuple[float, int]) -> bytes:
    """Make one member's header claim ``size`` bytes (checksum kept valid): the data cannot hold them."""
    where, size = how
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        offsets = [m.offset for m in archive.getmembers()]
    if not offsets:
        return tar
    offset = offsets[min(len(offsets) - 1, int(len(offsets) * where))]
    return claim(tar, offset, octal_size(size) if size < 8 << 30 else base256_size(size))


def _tar(skeleton: list[list[str]], rng: random.Random) -> bytes:
    samples = []
    for number, kinds in enumerate(skeleton):
        sample: dict[str, Any] = {"__key__": f"{number:04d}" if rng.random() < 0.9 else "dup"}
        for kind in kinds:
            ext, data = _member(kind, rng)
            sample[ext] = data
        samples.append(sample)
    return tar_bytes_io(samples)


# ---------------------------------------------------------------- checking
def _read(
    cls: type[ShardSource], path: str, on_error: str, max_record_bytes: int
) -> tuple[list[Any], Any, dict[str, int]]:
    source = cls.create(path, on_error=on_error, max_record_bytes=max_record_bytes)
    running = source.open(Context(), {})
    records: list[Any] = []
    try:
        for record in running.iterator:
            records.append(record)
    except TorchseqError as exc:
        return records, exc, dict(running.counters()["skipped"])
    return records, None, dict(running.counters()["skipped"])


def _valid(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    if "tokens" in record and "anchor" not in record:
        return True  # pre-tokenized sample: ids only
    return all(isinstance(record.get(k), str) and record[k].strip() for k in ("anchor", "positive"))


def _same(a: list[Any], b: list[Any]) -> bool:
    def plain(r: Any) -> Any:
        return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items() if k != "tokens"}

    return [plain(r) for r in a] == [plain(r) for r in b]


SHARD_FAULTS = {"corrupt shard", "unknown shard format"}


#: The parsers every input is read with (set per test).
PARSERS: list[str] = ["json"]


def _outcome(cls: type[ShardSource], path: str, max_record_bytes: int) -> tuple[Any, ...]:
    """One input through both modes: (raise-mode records, its error, skip-mode records, skip reasons)."""
    raised, error, _ = _read(cls, path, "raise", max_record_bytes)
    assert all(_valid(r) for r in raised)
    if error is None:
        return raised, None, None, None  # nothing was bad, so "skip" has nothing to skip: the same run
    assert str(error).startswith(path), str(error)
    skipped, skip_error, reasons = _read(cls, path, "skip", max_record_bytes)
    assert skip_error is None, f"on_error='skip' raised {skip_error!r}"
    assert all(_valid(r) for r in skipped)
    assert _same(raised, skipped[: len(raised)])
    assert reasons, "raise mode raised, skip mode skipped nothing"
    return raised, (type(error), str(error)), skipped, reasons


def check(
    name: str, cls: type[ShardSource], blob: bytes, suffix: str, max_record_bytes: int, intact: bool = False
) -> None:
    """One input with each parser of :data:`PARSERS`; ``intact``: well-formed container, so no shard-level fault."""
    RAN[name] += 1
    path = WORKDIR / f"shard{suffix}"
    path.write_bytes(blob)
    outcomes = []
    for parser in PARSERS:
        with json_parser(parser):
            outcomes.append(_outcome(cls, str(path), max_record_bytes))
    raised, error, skipped, reasons = outcomes[0]
    for other in outcomes[1:]:
        assert _same(other[0], raised) and other[1] == error, (PARSERS, error, other[1])
        assert (skipped is None) == (other[2] is None) and (skipped is None or _same(other[2], skipped))
        assert other[3] == reasons
    if intact and reasons:
        assert not SHARD_FAULTS & set(reasons), reasons


limits = st.sampled_from([64 << 20, 64 << 20, 256])


# ---------------------------------------------------------------- the fuzz tests
seeds = st.integers(0, 2**32 - 1)


@given(st.lists(st.sampled_from(LINE_KINDS), max_size=12), seeds, damage, limits)
@settings(FUZZ, max_examples=EXAMPLES["jsonl_structured"] // 2)
def _jsonl_structured(kinds: list[str], seed: int, how: Any, limit: int) -> None:
    rng = random.Random(seed)
    data = b"\n".join(_line(kind, rng) for kind in kinds) + rng.choice([b"\n", b""])
    check("jsonl_structured", JsonlSource, *_damaged(data, (how[0], None, None, [])), limit, intact=True)
    check("jsonl_structured", JsonlSource, *_damaged(data, how), limit)


@given(st.binary(max_size=600), st.sampled_from(["", ".gz", ".zst", ".jsonl"]), limits)
@settings(FUZZ, max_examples=EXAMPLES["jsonl_bytes"])
def _jsonl_bytes(blob: bytes, suffix: str, limit: int) -> None:
    check("jsonl_bytes", JsonlSource, blob, suffix, limit)


# A header claiming more than the shard holds: small, over the 256-byte limit, 8 GiB - 1, 1 TB.
lies = st.none() | st.tuples(st.floats(0, 1), st.sampled_from([700, 5000, (8 << 30) - 1, 10**12]))


@given(st.lists(st.lists(st.sampled_from(MEMBER_KINDS), min_size=1, max_size=3), max_size=6), seeds,
       damage, limits, lies)
@settings(FUZZ, max_examples=EXAMPLES["tar_structured"] // 2)
def _tar_structured(skeleton: list[list[str]], seed: int, how: Any, limit: int, lie: Any) -> None:
    tar = _tar(skeleton, random.Random(seed))
    blob, suffix = _damaged(tar, (how[0], None, None, []))
    check("tar_structured", WebDatasetSource, blob, ".tar" + suffix, limit, intact=True)
    blob, suffix = _damaged(_lie(tar, lie) if lie is not None else tar, how)
    check("tar_structured", WebDatasetSource, blob, ".tar" + suffix, limit)


@given(st.binary(max_size=3000), st.sampled_from([".tar", ".tar.gz", ""]), limits)
@settings(FUZZ, max_examples=EXAMPLES["tar_bytes"])
def _tar_bytes(blob: bytes, suffix: str, limit: int) -> None:
    check("tar_bytes", WebDatasetSource, blob, suffix, limit)


FUZZERS = {"jsonl_structured": _jsonl_structured, "jsonl_bytes": _jsonl_bytes,
           "tar_structured": _tar_structured, "tar_bytes": _tar_bytes}


# With orjson installed (the test extra installs it) every input is read with both parsers and
# the results compared; without it, with the standard library's alone.
PARSER_SETS = [pytest.param(["json", "orjson"], id="json+orjson")] if HAVE_ORJSON else [
    pytest.param(["json"], id="json")]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("parsers", PARSER_SETS)
@pytest.mark.parametrize("name", sorted(FUZZERS))
def test_fuzz_reader(name: str, parsers: list[str]) -> None:
    fuzzer = FUZZERS[name]
    before = RAN[name]
    PARSERS[:] = parsers
    try:
        fuzzer()
    finally:
        PARSERS[:] = ["json"]
    assert RAN[name] - before >= EXAMPLES[name]

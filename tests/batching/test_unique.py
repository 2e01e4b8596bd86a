"""Duplicate-free batches (``unique=``) on batch, bucket and batch_by_tokens."""

from __future__ import annotations

import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import write_jsonl
from tests.support.resume import check_resume
from torchseq.batching.lengths import column_lengths, padded_tokens
from torchseq.batching.unique import Unique, normalize_text
from torchseq.errors import ConfigError
from torchseq.meter import pipeline_counters
from torchseq.state import decode_records

NUM_RECORDS = 720


def duplicate_rows(n: int = NUM_RECORDS, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs drawn from small pools of texts: most texts occur many times, in varied case and spacing."""
    rng = random.Random(seed)
    questions = [f"how do I configure package {k}" for k in range(60)]
    answers = [f"package {k} is configured through its file in etc {'and more ' * (k % 9)}" for k in range(90)]

    def variant(text: str) -> str:
        return rng.choice([text, text.upper(), f"  {text} ", text.capitalize()])

    rows = []
    for i in range(n):
        row: dict[str, Any] = {"anchor": variant(rng.choice(questions)), "positive": variant(rng.choice(answers)),
                               "guid": i}
        if i % 3 == 0:  # a popular text on every third record
            row["positive"] = variant(answers[0])
        rows.append(row)
    return rows


def triplet_rows(n: int = NUM_RECORDS, seed: int = 1) -> list[dict[str, Any]]:
    """Records with two hard negatives each, negatives shared with other records' positives."""
    rows = duplicate_rows(n, seed)
    rng = random.Random(seed)
    for row in rows:
        row["negatives"] = [rows[rng.randrange(n)]["positive"], f"unrelated text {rng.randrange(50)}"]
    return rows


def shards(tmp_path: Path, rows: list[dict[str, Any]], num_shards: int = 4) -> list[str]:
    size = -(-len(rows) // num_shards)
    return [write_jsonl(tmp_path / f"dup-{k}.jsonl", rows[k * size : (k + 1) * size]) for k in range(num_shards)]


def texts(record: dict[str, Any]) -> list[str]:
    return [record["anchor"], record["positive"], *record.get("negatives", [])]


def assert_duplicate_free(batch: list[dict[str, Any]], key: Any = normalize_text) -> None:
    seen: Counter[Any] = Counter()
    for record in batch:
        seen.update({key(t) for t in texts(record)})
    repeated = [t for t, c in seen.items() if c > 1]
    assert not repeated, f"batch of {len(batch)} repeats {repeated[:3]}"


def build(spec: list[str], stage: str, unique: Any, tokenizer_file: str) -> ts.Pipeline:
    pipe = ts.read_jsonl(spec).shuffle(buffer_size=64, seed=3)
    if stage == "batch":
        return pipe.batch(16, unique=unique)
    pipe = pipe.tokenize(tokenizer_file, max_length=32)
    if stage == "bucket":
        return pipe.bucket(16, pool_batches=4, unique=unique)
    return pipe.batch_by_tokens(1024, pool_size=96, unique=unique)


def drain(pipe: ts.Pipeline, num_workers: int) -> list[list[dict[str, Any]]]:
    return list(DataLoader(pipe, batch_size=None, num_workers=num_workers))


STAGES = ["batch", "bucket", "batch_by_tokens"]


# Workers: the pooled stages, where deferred records carry over between pools.
WORKER_CASES = [("batch", 0), ("bucket", 0), ("bucket", 2), ("batch_by_tokens", 0), ("batch_by_tokens", 2)]


@pytest.mark.parametrize(("stage", "num_workers"), WORKER_CASES)
def test_no_duplicates_and_every_record_once(tmp_path: Path, tokenizer_file: str, stage: str, num_workers: int) -> None:
    rows = triplet_rows()
    spec = shards(tmp_path, rows)
    plain = drain(build(spec, stage, False, tokenizer_file), num_workers)
    assert any(not _is_unique(b) for b in plain), "test data must produce duplicates without unique="
    batches = drain(build(spec, stage, True, tokenizer_file), num_workers)
    for batch in batches:
        assert_duplicate_free(batch)
    guids = sorted(r["guid"] for b in batches for r in b)
    assert guids == list(range(len(rows)))


def _is_unique(batch: list[dict[str, Any]]) -> bool:
    try:
        assert_duplicate_free(batch)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("stage", STAGES)
def test_leftover_rules(tmp_path: Path, tokenizer_file: str, stage: str) -> None:
    """A text in 1 of 3 records cannot fit 16-record batches: each rule does what it says."""
    rows = duplicate_rows()
    spec = shards(tmp_path, rows)
    results = {}
    for rule in ("smaller", "duplicates", "drop"):
        pipe = build(spec, stage, Unique(leftover=rule, max_deferred=64), tokenizer_file)
        batches = drain(pipe, 0)
        counters = pipeline_counters(pipe.state_dict())
        guids = [r["guid"] for b in batches for r in b]
        assert len(guids) == len(set(guids))
        results[rule] = (batches, counters, guids)
        assert counters["unique.records"] == len(rows)
        assert counters["unique.deferrals"] > 0
    batches, counters, guids = results["smaller"]
    assert sorted(guids) == list(range(len(rows)))
    assert all(_is_unique(b) for b in batches)
    assert counters["unique.smaller"] > 0 and counters["unique.forced"] == 0
    batches, counters, guids = results["duplicates"]
    assert sorted(guids) == list(range(len(rows)))
    assert counters["unique.forced"] > 0
    assert sum(not _is_unique(b) for b in batches) <= counters["unique.forced"]
    batches, counters, guids = results["drop"]
    assert all(_is_unique(b) for b in batches)
    assert counters["unique.dropped"] > 0
    assert len(guids) + counters["unique.dropped"] == len(rows)


def test_deferral_buffer_is_bounded(tmp_path: Path) -> None:
    rows = duplicate_rows()
    pipe = ts.read_jsonl(shards(tmp_path, rows)).batch(16, unique=Unique(max_deferred=20))
    iterator = iter(pipe)
    largest = 0
    for batch in iterator:
        assert_duplicate_free(batch)
        held = pipe.state_dict()["stages"][1]["unique"]
        largest = max(largest, len(decode_records(held["deferred"])))
    assert largest == 20


@pytest.mark.parametrize("stage", ["batch", "bucket"])
def test_unique_on_distinct_texts_changes_nothing(make_shards: Any, tokenizer_file: str, stage: str) -> None:
    spec = make_shards([150, 90, 200])
    plain = drain(build(spec, stage, False, tokenizer_file), 0)
    unique = drain(build(spec, stage, True, tokenizer_file), 0)
    assert unique == plain


def test_token_budget_respected_with_unique(tmp_path: Path, tokenizer_file: str) -> None:
    batches = drain(build(shards(tmp_path, triplet_rows()), "batch_by_tokens", True, tokenizer_file), 0)
    for batch in batches:
        assert len(batch) == 1 or padded_tokens(batch) <= 1024
    sizes = [len(b) for b in batches]
    assert max(sizes) > 8


def test_sorted_by_length_within_pool(tmp_path: Path, tokenizer_file: str) -> None:
    """Deferred records are placed among records of similar length (padding stays low)."""
    spec = shards(tmp_path, duplicate_rows())
    pipe = ts.read_jsonl(spec).tokenize(tokenizer_file, max_length=64)
    plain = drain(pipe.bucket(16, pool_batches=8), 0)
    unique = drain(pipe.bucket(16, pool_batches=8, unique=True), 0)

    def efficiency(batches: list[list[dict[str, Any]]]) -> float:
        real = sum(sum(column_lengths(r)) for b in batches for r in b)
        return real / sum(padded_tokens(b) for b in batches)

    assert efficiency(unique) > efficiency(plain) - 0.05


def test_guid_option(tmp_path: Path) -> None:
    rows = [{"anchor": f"question {i}", "positive": f"answer {i}", "guid": i % 5} for i in range(40)]
    spec = [write_jsonl(tmp_path / "g.jsonl", rows)]
    batches = drain(ts.read_jsonl(spec).batch(5, unique=Unique(guid=True)), 0)
    for batch in batches:
        assert len({r["guid"] for r in batch}) == len(batch)
    assert sum(len(b) for b in batches) == 40
    assert [len(b) for b in drain(ts.read_jsonl(spec).batch(5, unique=True), 0)] == [5] * 8


def test_custom_key(tmp_path: Path) -> None:
    rows = [{"anchor": f"q{i}", "positive": "Same" if i % 2 else " same "} for i in range(8)]
    spec = [write_jsonl(tmp_path / "k.jsonl", rows)]
    assert [len(b) for b in drain(ts.read_jsonl(spec).batch(4, unique=Unique(key=str)), 0)] == [2, 2, 2, 2]
    assert [len(b) for b in drain(ts.read_jsonl(spec).batch(4, unique=True), 0)] == [1] * 8


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="leftover"):
        Unique(leftover="keep")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_deferred"):
        Unique(max_deferred=0)
    with pytest.raises(ConfigError, match="unique"):
        ts.read_jsonl("x.jsonl").batch(4, unique="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("stage", "num_workers"), WORKER_CASES)
def test_resume_exact(tmp_path: Path, tokenizer_file: str, stage: str, num_workers: int) -> None:
    spec = shards(tmp_path, triplet_rows(240))
    check_resume(lambda: build(spec, stage, Unique(max_deferred=8), tokenizer_file), num_workers)


@pytest.mark.parametrize("stage", ["batch", "bucket", "batch_by_tokens"])
def test_planned_batch_count_kept_under_ddp(tmp_path: Path, tokenizer_file: str, stage: str) -> None:
    """Balanced DDP plans a number of batches per rank; unique= must not cost extra ones."""
    rows = duplicate_rows()
    spec = shards(tmp_path, rows)
    guids: list[int] = []
    for rank in range(2):
        pipe = build(spec, stage, True, tokenizer_file).with_topology(rank, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ts.BalanceWarning)
            batches = list(pipe)
        assert len(batches) == len(pipe)
        counters = pipeline_counters(pipe.state_dict())
        assert counters["unique.deferrals"] > 0
        assert sum(not _is_unique(b) for b in batches) <= counters["unique.forced"]
        guids += [r["guid"] for b in batches for r in b]
    assert sorted(guids) == list(range(len(rows)))

"""Pipeline statistics: counted in DataLoader workers, summed in the main process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import pair
from torchseq.context import Context
from torchseq.errors import SkippedInput
from torchseq.pipeline.stats import PipelineStats, StatsTable, merge
from torchseq.protocol import Counters, Running
from torchseq.state import State


def shards_with_bad_lines(tmp_path: Path, count: int = 4, size: int = 150) -> tuple[list[str], int]:
    """``count`` shards; each has a bad JSON line and a wrong-typed line. Returns (paths, valid records)."""
    paths = []
    for k in range(count):
        lines = [json.dumps(pair(i)) for i in range(k * size, (k + 1) * size)]
        lines.insert(10, "{broken")
        lines.insert(20, "[1, 2]")
        path = tmp_path / f"part-{k}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    return paths, count * size


def tokenized(paths: list[str], tokenizer_file: str, **reader: Any) -> ts.Pipeline:
    return (
        ts.read_jsonl(paths, on_error="skip", name="debian-like", **reader)
        .tokenize(tokenizer_file, max_length=32)
        .bucket(batch_size=16)
        .collate(pad_to_multiple_of=8)
    )


def consume(pipe: ts.Pipeline, **loader: Any) -> tuple[int, int, int]:
    """Batches, real tokens and padded tokens, counted in the main process from the batches."""
    batches = real = padded = 0
    for batch in DataLoader(pipe, batch_size=None, **loader):
        batches += 1
        for column in ("anchor", "positive"):
            mask = batch[column]["attention_mask"]
            real += int(mask.sum())
            padded += mask.numel()
    return batches, real, padded


def test_stats_are_summed_over_two_workers(tmp_path: Path, tokenizer_file: str) -> None:
    paths, valid = shards_with_bad_lines(tmp_path)
    pipe = tokenized(paths, tokenizer_file)
    batches, real, padded = consume(pipe, num_workers=2)
    stats = pipe.stats()
    assert stats.workers == 2
    assert stats.records == valid
    assert stats.skipped == {"invalid json": 4, "wrong type": 4}
    assert sorted(e.place for e in stats.errors) == sorted(
        f"{p}:{line}" for p in paths for line in (11, 21)
    )
    assert {e.reason for e in stats.errors} == {"invalid json", "wrong type"}
    assert stats.sources == {"debian-like": valid}
    assert stats.batches == batches
    assert (stats.real_tokens, stats.padded_tokens) == (real, padded)
    assert stats.padding_efficiency == pytest.approx(real / padded)
    assert stats.records_per_second > 0 and stats.active_seconds > 0
    assert "records" in str(stats) and json.dumps(stats.as_dict())


def test_stats_in_the_main_process(tmp_path: Path) -> None:
    paths, valid = shards_with_bad_lines(tmp_path, count=2)
    pipe = ts.read_jsonl(paths, on_error="skip").batch(7)
    batches = list(pipe)
    stats = pipe.stats()
    assert (stats.records, stats.batches, stats.workers) == (valid, len(batches), 1)
    assert stats.padding_efficiency is None  # nothing collated
    label = f"jsonl:{paths[0]} (+1 more)"
    assert stats.sources == {label: valid}


@pytest.mark.parametrize("persistent", [False, True])
def test_stats_accumulate_over_epochs_until_reset(tmp_path: Path, tokenizer_file: str, persistent: bool) -> None:
    paths, valid = shards_with_bad_lines(tmp_path)
    pipe = tokenized(paths, tokenizer_file)
    loader = DataLoader(pipe, batch_size=None, num_workers=2, persistent_workers=persistent)
    for epoch in range(2):
        pipe.set_epoch(epoch)
        batches = sum(1 for _ in loader)
    stats = pipe.stats()
    assert stats.records == 2 * valid
    assert stats.skipped == {"invalid json": 8, "wrong type": 8}
    assert stats.batches == 2 * batches
    assert stats.counters.get("runs") is None  # bookkeeping is not a user counter
    pipe.reset_stats()
    assert pipe.stats() == PipelineStats()
    pipe.set_epoch(2)
    assert sum(1 for _ in loader) == batches
    assert pipe.stats().records == valid


def test_stats_reach_the_training_loop_while_it_runs(tmp_path: Path) -> None:
    paths, valid = shards_with_bad_lines(tmp_path, size=400)
    pipe = ts.read_jsonl(paths, on_error="skip").batch(4)
    seen_mid_epoch = 0
    deadline = time.monotonic() + 30
    for number, _ in enumerate(DataLoader(pipe, batch_size=None, num_workers=2)):
        if number % 50 == 0 and not seen_mid_epoch and time.monotonic() < deadline:
            time.sleep(0.3)  # workers flush every 0.25 s while they produce
            seen_mid_epoch = pipe.stats().records
    assert 0 < seen_mid_epoch < valid
    assert pipe.stats().records == valid


def test_stats_reach_spawned_workers(tmp_path: Path) -> None:
    paths, valid = shards_with_bad_lines(tmp_path, count=2, size=40)
    pipe = ts.read_jsonl(paths, on_error="skip").batch(8)
    batches = sum(1 for _ in DataLoader(pipe, batch_size=None, num_workers=2, multiprocessing_context="spawn"))
    stats = pipe.stats()
    assert (stats.records, stats.batches, stats.workers) == (valid, batches, 2)
    assert stats.skipped == {"invalid json": 2, "wrong type": 2}


@dataclass(frozen=True)
class DropOdd:
    """A stage that defers (drops) odd records and reports them through its counters."""

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Running:
        return _DroppingOdd(upstream)


class _DroppingOdd(Running):
    __slots__ = ("deferred",)

    def __init__(self, upstream: Iterator[Any]) -> None:
        self.deferred = 0
        self.iterator = self._drop(upstream)

    def counters(self) -> Counters:
        return {"deferred": self.deferred}

    def _drop(self, upstream: Iterator[Any]) -> Iterator[Any]:
        for index, record in enumerate(upstream):
            if index % 2:
                self.deferred += 1
                continue
            yield record


def test_stages_report_their_own_counters(tmp_path: Path) -> None:
    paths, valid = shards_with_bad_lines(tmp_path)
    pipe = ts.read_jsonl(paths, on_error="skip")._then(DropOdd())
    delivered = sum(1 for _ in DataLoader(pipe, batch_size=None, num_workers=2))
    stats = pipe.stats()
    assert stats.counters["deferred"] == valid - delivered
    assert stats.batches == delivered


def test_merge_adds_numbers_dicts_and_lists() -> None:
    total = merge({}, {"records": 3, "skipped": {"a": 1}, "errors": [["p", "a", "m"]], "t": 0.5})
    merge(total, {"records": 4, "skipped": {"a": 2, "b": 1}, "errors": [["q", "b", "n"]], "t": 0.25})
    assert total == {"records": 7, "skipped": {"a": 3, "b": 1},
                     "errors": [["p", "a", "m"], ["q", "b", "n"]], "t": 0.75}


def test_table_rows_keep_counts_exact_when_errors_do_not_fit() -> None:
    table = StatsTable(rows=2, row_bytes=2048)
    errors = [[f"/data/shard-{i}.jsonl:{i}", "invalid json", "x" * 100] for i in range(100)]
    table.write(1, {"records": 5, "skipped": {"invalid json": 100}, "errors": errors})
    row = table.read(1)
    assert row["records"] == 5 and row["skipped"] == {"invalid json": 100}
    assert 0 < len(row["errors"]) < 100 and row["errors_truncated"] == 1
    assert table.read(0) == {}
    stats = table.collect()
    assert stats.records == 5 and isinstance(stats.errors[0], SkippedInput)
    table.reset()
    assert table.collect() == PipelineStats()


def test_duplicate_deferrals_and_mix_deliveries_reach_stats(tmp_path: Path, tokenizer_file: str) -> None:
    """unique= and mix() report through the same table: summed over workers, next to the state counters."""
    rows = [pair(i % 40) for i in range(400)]  # every pair ten times: unique= must defer
    first = tmp_path / "dups-a.jsonl"
    second = tmp_path / "dups-b.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in rows[:200]) + "\n")
    second.write_text("\n".join(json.dumps(r) for r in rows[200:]) + "\n")
    mixed = ts.mix({"a": ts.read_jsonl(str(first)), "b": ts.read_jsonl(str(second))}, stop="all_exhausted")
    pipe = mixed.batch(16, unique=True).balance("off")
    batches = list(DataLoader(pipe, batch_size=None, num_workers=2))
    stats = pipe.stats()
    assert stats.counters["unique.deferrals"] > 0
    assert stats.counters["mix.a.records"] + stats.counters["mix.b.records"] == 400
    assert sum(len(b) for b in batches) == stats.counters["unique.records"] - stats.counters["unique.dropped"]

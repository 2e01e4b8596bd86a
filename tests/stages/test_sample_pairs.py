"""sample_pairs: fresh draws from sets, positives and negatives every epoch; seeded and resumable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import write_jsonl
from tests.support.resume import check_resume
from torchseq.errors import ConfigError, DataError
from torchseq.meter import pipeline_counters
from torchseq.records import normalize
from torchseq.stages.sample_pairs import SamplePairs


def set_rows(n: int = 60) -> list[dict[str, Any]]:
    return [{"set": [f"paraphrase {i}.{k}" for k in range(2 + i % 4)], "guid": i} for i in range(n)]


def query_rows(n: int = 60) -> list[dict[str, Any]]:
    return [{"query": f"query {i}", "pos": [f"pos {i}.{k}" for k in range(1 + i % 3)],
             "neg": [f"neg {i}.{k}" for k in range(i % 6)], "guid": i} for i in range(n)]


@pytest.fixture
def set_spec(tmp_path: Path) -> list[str]:
    rows = set_rows()
    return [write_jsonl(tmp_path / f"sets-{k}.jsonl", rows[k::3]) for k in range(3)]


@pytest.fixture
def query_spec(tmp_path: Path) -> list[str]:
    rows = [r for r in query_rows() if r["neg"]]
    return [write_jsonl(tmp_path / f"queries-{k}.jsonl", rows[k::3]) for k in range(3)]


def draws(spec: list[str], epoch: int, num_workers: int = 0, **kwargs: Any) -> dict[int, dict[str, Any]]:
    pipe = ts.read_jsonl(spec).shuffle(buffer_size=8, seed=epoch).sample_pairs(**kwargs)
    pipe.set_epoch(epoch)
    loader = DataLoader(pipe.batch(4), batch_size=None, num_workers=num_workers)
    return {r["guid"]: r for batch in loader for r in batch}


def test_sets_draw_a_fresh_pair_each_epoch(set_spec: list[str]) -> None:
    by_epoch = [draws(set_spec, epoch) for epoch in range(4)]
    for drawn in by_epoch:
        assert sorted(drawn) == list(range(60))
        for guid, record in drawn.items():
            members = {f"paraphrase {guid}.{k}" for k in range(2 + guid % 4)}
            assert record["anchor"] in members and record["positive"] in members
            assert record["anchor"] != record["positive"]
            assert "set" not in record
    pairs = [{g: (r["anchor"], r["positive"]) for g, r in d.items()} for d in by_epoch]
    assert pairs[0] != pairs[1] != pairs[2]


def test_draws_do_not_depend_on_workers_or_order(set_spec: list[str]) -> None:
    single = draws(set_spec, 3, num_workers=0)
    workers = draws(set_spec, 3, num_workers=2)
    assert single == workers


def test_set_pairs_are_uniform() -> None:
    stage = SamplePairs()
    record = normalize({"set": ["a", "b", "c"], "guid": 0})
    counts = Counter((d["anchor"], d["positive"]) for d in (stage.draw(record, e) for e in range(1200)))
    assert len(counts) == 6
    assert all(150 <= c <= 250 for c in counts.values()), counts  # expected 200 each


def test_positive_and_negatives(query_spec: list[str]) -> None:
    drawn = draws(query_spec, 0, num_negatives=2)
    for guid, record in drawn.items():
        assert record["anchor"] == f"query {guid}"
        assert record["positive"] in {f"pos {guid}.{k}" for k in range(1 + guid % 3)}
        pool = {f"neg {guid}.{k}" for k in range(guid % 6)}
        assert len(record["negatives"]) == 2 and set(record["negatives"]) <= pool
        if len(pool) >= 2:
            assert len(set(record["negatives"])) == 2
        assert "positives" not in record
    assert draws(query_spec, 1, num_negatives=2) != drawn
    assert all("negatives" not in r for r in draws(query_spec, 0, num_negatives=0).values())
    kept = draws(query_spec, 0)
    assert all(len(r["negatives"]) == r["guid"] % 6 for r in kept.values())


def test_short_and_missing_negatives(tmp_path: Path) -> None:
    spec = [write_jsonl(tmp_path / "q.jsonl", [r for r in query_rows(12) if r["neg"]])]
    pipe = ts.read_jsonl(spec).sample_pairs(num_negatives=3)
    records = list(pipe)
    assert all(len(r["negatives"]) == 3 for r in records)
    short = sum(1 for r in query_rows(12) if 0 < len(r["neg"]) < 3)
    assert pipeline_counters(pipe.state_dict())["sample_pairs.short_negatives"] == short
    missing = [write_jsonl(tmp_path / "m.jsonl", query_rows(3))]
    with pytest.raises(DataError, match="no negatives to draw num_negatives=3"):
        list(ts.read_jsonl(missing).sample_pairs(num_negatives=3))


def test_swap(make_shards: Any) -> None:
    spec = make_shards([200])
    plain = {r["anchor"]: r["positive"] for r in ts.read_jsonl(spec)}
    swapped = list(ts.read_jsonl(spec).sample_pairs(swap=True, seed=1))
    flipped = sum(1 for r in swapped if r["anchor"] not in plain)
    assert 70 <= flipped <= 130  # about half of 200
    for r in swapped:
        assert plain.get(r["anchor"]) == r["positive"] or plain.get(r["positive"]) == r["anchor"]
    assert swapped == list(ts.read_jsonl(spec).sample_pairs(swap=True, seed=1))
    assert swapped != list(ts.read_jsonl(spec).sample_pairs(swap=True, seed=2))


def test_placement_and_arguments(make_shards: Any, tokenizer_file: str) -> None:
    tokenized = ts.read_jsonl(make_shards([4])).tokenize(tokenizer_file).sample_pairs()
    with pytest.raises(ConfigError, match="before tokenize"):
        list(tokenized)
    with pytest.raises(ConfigError, match="num_negatives"):
        ts.read_jsonl(make_shards([4])).sample_pairs(num_negatives=-1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_exact(query_spec: list[str], tokenizer_file: str, num_workers: int) -> None:
    def make() -> ts.Pipeline:
        return (ts.read_jsonl(query_spec).shuffle(buffer_size=8, seed=0).sample_pairs(num_negatives=1, swap=True)
                .tokenize(tokenizer_file, max_length=16).batch(4).collate())

    check_resume(make, num_workers)

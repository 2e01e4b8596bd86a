"""Mixtures: weights, temperature and cap, stop rules, levels, DDP schedule, resume."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import write_jsonl
from tests.support.launch import torchrun
from tests.support.resume import check_resume, resume_after, run
from torchseq.errors import ConfigError, DataError, StateError
from torchseq.meter import pipeline_counters
from torchseq.mixing import count_records, mixture_weights

SIZES = {"big": 600, "mid": 200, "small": 60}


def source_rows(name: str, n: int, negatives: int = 0) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"anchor": f"{name} question {i}", "positive": f"{name} answer {i}",
                               "guid": f"{name}-{i}"}
        if negatives:
            row["negatives"] = [f"{name} wrong answer {i}.{k}" for k in range(negatives)]
        rows.append(row)
    return rows


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, list[str]]:
    """name -> 4 shards holding that source's records."""
    out = {}
    for name, n in SIZES.items():
        rows = source_rows(name, n)
        size = n // 4
        out[name] = [write_jsonl(tmp_path / f"{name}-{k}.jsonl", rows[k * size : (k + 1) * size]) for k in range(4)]
    return out


def readers(sources: dict[str, list[str]], shuffle: bool = True) -> dict[str, ts.Pipeline]:
    pipes = {}
    for name, spec in sources.items():
        pipe = ts.read_jsonl(spec)
        pipes[name] = pipe.shuffle(buffer_size=32, seed=1) if shuffle else pipe
    return pipes


def assert_frequencies(counts: Counter[str], targets: dict[str, float]) -> None:
    total = sum(counts.values())
    for name, p in targets.items():
        sigma = math.sqrt(p * (1 - p) / total)
        observed = counts[name] / total
        assert abs(observed - p) < 5 * sigma + 1e-9, f"{name}: observed {observed:.4f}, target {p:.4f}"


# ---------------------------------------------------------------- weights
def test_mixture_weights_math() -> None:
    assert mixture_weights([600, 200, 60]) == pytest.approx([600 / 860, 200 / 860, 60 / 860])
    flat = mixture_weights([600, 200, 60], temperature=2.0)
    roots = [math.sqrt(n) for n in (600, 200, 60)]
    assert flat == pytest.approx([r / sum(roots) for r in roots])
    capped = mixture_weights([600, 200, 60], cap=200)
    assert capped == pytest.approx([200 / 460, 200 / 460, 60 / 460])
    assert mixture_weights([1, 1000], temperature=1e6) == pytest.approx([0.5, 0.5], abs=1e-4)


def test_weights_from_record_counts(sources: dict[str, list[str]]) -> None:
    pipes = readers(sources)
    assert [count_records(p) for p in pipes.values()] == list(SIZES.values())
    mixed = ts.mix(pipes, temperature=2.0, cap=400)
    expected = mixture_weights([400, 200, 60], temperature=2.0)
    assert mixed.source.probabilities == pytest.approx(expected)  # type: ignore[attr-defined]
    assert list(mixed.source.targets) == list(SIZES)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("weights", "temperature", "cap"),
    [(None, 1.0, None), (None, 3.0, None), (None, 1.0, 150), ({"big": 1, "mid": 1, "small": 2}, 1.0, None),
     ([5, 3, 2], 2.0, None)],
)
def test_record_frequencies_match_targets(sources: dict[str, list[str]], weights: Any, temperature: float,
                                          cap: int | None) -> None:
    mixed = ts.mix(readers(sources), weights, temperature, cap, stop="never", seed=7)
    counts = Counter(r["dataset"] for r in itertools.islice(iter(mixed), 6000))
    assert_frequencies(counts, mixed.source.targets)  # type: ignore[attr-defined]
    counters = pipeline_counters(mixed.state_dict())
    assert {n: counters[f"mix.{n}.records"] for n in SIZES} == {n: counts[n] for n in SIZES}


def test_batch_frequencies_and_homogeneous(sources: dict[str, list[str]]) -> None:
    children = {name: pipe.batch(8) for name, pipe in readers(sources).items()}
    mixed = ts.mix(children, temperature=2.0, stop="never", level="batch", seed=3)
    batches = list(itertools.islice(iter(mixed), 3000))
    for batch in batches:
        (name,) = {r["dataset"] for r in batch}
        assert all(r["guid"].startswith(f"{name}-") for r in batch)
    counts = Counter(batch[0]["dataset"] for batch in batches)
    assert_frequencies(counts, mixed.source.targets)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- stop rules
def test_all_exhausted_delivers_every_record_once(sources: dict[str, list[str]]) -> None:
    mixed = ts.mix(readers(sources), stop="all_exhausted", seed=1)
    guids = [r["guid"] for r in mixed]
    assert sorted(guids) == sorted(f"{n}-{i}" for n, size in SIZES.items() for i in range(size))


def test_first_exhausted_stops_when_a_source_runs_dry(sources: dict[str, list[str]]) -> None:
    mixed = ts.mix(readers(sources), weights=[1, 1, 1], stop="first_exhausted", seed=1)
    records = list(mixed)
    counts = Counter(r["dataset"] for r in records)
    assert len({r["guid"] for r in records}) == len(records)
    assert counts["small"] == SIZES["small"]  # the one that ran dry, delivered in full
    assert counts["big"] < SIZES["big"] and counts["mid"] < SIZES["mid"]


def test_never_cycles_with_a_new_order_each_pass(sources: dict[str, list[str]]) -> None:
    mixed = ts.mix(readers({"small": sources["small"]}), stop="never")
    guids = [r["guid"] for r in itertools.islice(iter(mixed), 3 * SIZES["small"])]
    passes = [guids[k * SIZES["small"] : (k + 1) * SIZES["small"]] for k in range(3)]
    for one in passes:
        assert sorted(one) == sorted(f"small-{i}" for i in range(SIZES["small"]))
    assert passes[0] != passes[1] != passes[2]
    plain = readers({"small": sources["small"]})["small"]
    assert passes[0] == [r["guid"] for r in plain]  # pass 0 is the source's own epoch


def test_never_with_an_empty_share_fails_clearly(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    mixed = ts.mix({"empty": ts.read_jsonl(empty)}, weights=[1], stop="never")
    with pytest.raises(DataError, match="'empty' yields nothing"):
        next(iter(mixed))


# ---------------------------------------------------------------- shapes and levels
def test_record_level_refuses_mixed_shapes(tmp_path: Path) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", source_rows("pairs", 50))
    triplets = write_jsonl(tmp_path / "triplets.jsonl", source_rows("triplets", 50, negatives=1))
    mixed = ts.mix({"pairs": ts.read_jsonl(pairs), "triplets": ts.read_jsonl(triplets)}, weights=[1, 1])
    with pytest.raises(ConfigError, match="1 negatives|0 negatives"):
        list(mixed)


def test_batch_level_keeps_shapes_apart(tmp_path: Path, tokenizer_file: str) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", source_rows("pairs", 80))
    triplets = write_jsonl(tmp_path / "triplets.jsonl", source_rows("triplets", 80, negatives=2))
    children = {name: ts.read_jsonl(spec).tokenize(tokenizer_file, max_length=16).batch(8).collate()
                for name, spec in (("pairs", pairs), ("triplets", triplets))}
    batches = list(ts.mix(children, level="batch", stop="all_exhausted"))
    assert len(batches) == 20
    for batch in batches:
        (name,) = set(batch["dataset"])
        assert ("negatives" in batch) == (name == "triplets")
        if name == "triplets":
            assert tuple(batch["negatives"]["input_ids"].shape[:2]) == (8, 2)


def test_level_errors(sources: dict[str, list[str]]) -> None:
    with pytest.raises(ConfigError, match="must yield batches"):
        next(iter(ts.mix(readers(sources), level="batch")))
    batched = {n: p.batch(4) for n, p in readers(sources).items()}
    with pytest.raises(ConfigError, match="batch after mixing"):
        next(iter(ts.mix(batched)))
    with pytest.raises(ConfigError, match="stop"):
        ts.mix(readers(sources), stop="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="missing"):
        ts.mix(readers(sources), weights={"big": 1})
    with pytest.raises(ConfigError, match="cap"):
        ts.mix(readers(sources), weights=[1, 1, 1], cap=10)


# ---------------------------------------------------------------- DDP schedule
def _batch_sources(pipe: ts.Pipeline, num_workers: int, steps: int) -> list[str]:
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
    return [b[0]["dataset"] for b in itertools.islice(iter(loader), steps)]


def test_schedule_is_the_same_for_every_rank_and_worker_count(sources: dict[str, list[str]]) -> None:
    def make(rank: int) -> ts.Pipeline:
        children = {n: p.batch(4) for n, p in readers(sources).items()}
        return ts.mix(children, weights=[2, 1, 1], level="batch", stop="never", seed=5).with_topology(rank, 2)

    reference = _batch_sources(make(0), 0, 60)
    assert len(set(reference)) == 3
    assert _batch_sources(make(1), 0, 60) == reference
    assert _batch_sources(make(0), 2, 60) == reference
    assert _batch_sources(make(1), 3, 60) == reference
    # ...while the ranks read different records.
    first = [r["guid"] for b in itertools.islice(iter(make(0)), 20) for r in b]
    second = [r["guid"] for b in itertools.islice(iter(make(1)), 20) for r in b]
    assert not set(first) & set(second)


@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
def test_ranks_stay_in_step_when_sources_run_dry(sources: dict[str, list[str]], stop: str) -> None:
    """Each source is balanced across ranks on its own, so every rank's workers run dry at the same steps."""

    def make(rank: int) -> ts.Pipeline:
        children = {n: p.batch(4) for n, p in readers(sources).items()}
        return ts.mix(children, weights=[1, 1, 2], level="batch", stop=stop, seed=5).with_topology(rank, 2)

    runs = [_batch_sources(make(rank), 2, 10_000) for rank in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0]) > 0
    if stop == "all_exhausted":
        assert len(runs[0]) == sum(-(-size // 2 // 4) for size in SIZES.values())  # every batch once


DDP_SCRIPT = r"""
import itertools, json, sys
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
import torchseq as ts

dist.init_process_group("gloo")
rank = dist.get_rank()
specs = json.loads(sys.argv[1])
children = {n: ts.read_jsonl(s).shuffle(buffer_size=16, seed=0).batch(4, unique=True) for n, s in specs.items()}
pipe = ts.mix(children, weights=[3, 2, 1], level="batch", stop="never", seed=11)
names = list(specs)
seen, guids = [], []
for epoch in range(2):
    pipe.set_epoch(epoch)
    loader = DataLoader(pipe, batch_size=None, num_workers=2)
    for batch in itertools.islice(iter(loader), 40):
        mine = torch.tensor([names.index(batch[0]["dataset"])])
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        seen.append([int(t) for t in gathered])
        guids.append([r["guid"] for r in batch])
with open(sys.argv[2] + f".{rank}", "w") as out:
    json.dump({"seen": seen, "guids": guids}, out)
dist.destroy_process_group()
"""


def test_same_source_on_every_rank_under_torchrun(
    sources: dict[str, list[str]], tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    script = tmp_path / "mix_ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "result"
    done = torchrun(str(script), [json.dumps(sources), str(out)], subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    for result in results:
        assert len(result["seen"]) == 80
        for step in result["seen"]:
            assert step[0] == step[1], f"ranks drew different sources: {step}"
    assert Counter(s[0] for s in results[0]["seen"]).keys() == {0, 1, 2}
    first = {g for batch in results[0]["guids"][:40] for g in batch}
    second = {g for batch in results[1]["guids"][:40] for g in batch}
    assert not first & second


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_record_level_with_unique(sources: dict[str, list[str]], tokenizer_file: str,
                                        num_workers: int) -> None:
    def make() -> ts.Pipeline:
        mixed = ts.mix(readers(sources), weights=[1, 1, 1], stop="all_exhausted", seed=2)
        return mixed.tokenize(tokenizer_file, max_length=16).bucket(8, pool_batches=4, unique=True).collate()

    check_resume(make, num_workers)


def _batch_mix(sources: dict[str, list[str]], tokenizer_file: str, stop: Any) -> ts.Pipeline:
    children = {n: p.tokenize(tokenizer_file, max_length=16).bucket(8, pool_batches=2, unique=True).collate()
                for n, p in readers(sources).items()}
    return ts.mix(children, level="batch", stop=stop, seed=4)


def test_resume_batch_level(sources: dict[str, list[str]], tokenizer_file: str) -> None:
    """With workers: see the cycling test below."""
    check_resume(lambda: _batch_mix(sources, tokenizer_file, "all_exhausted"), 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_batch_level_cycling(sources: dict[str, list[str]], tokenizer_file: str, num_workers: int) -> None:
    """A cycling mixture never ends: compare the next steps after each cut (small cycles ~4 times)."""

    def make() -> ts.Pipeline:
        return _batch_mix(sources, tokenizer_file, "never")

    full = run(make, num_workers, limit=150)
    for cut in (0, 1, 77, 149):
        rest, _ = resume_after(make, num_workers, cut, limit=150 - cut)
        assert rest == full[cut:], f"cut {cut}"


def test_resume_checks_sources(sources: dict[str, list[str]]) -> None:
    pipes = readers(sources)
    mixed = ts.mix(pipes, stop="all_exhausted")
    iterator = iter(mixed)
    next(iterator)
    state = mixed.state_dict()
    other = ts.mix({"big": pipes["big"], "mid": pipes["mid"], "tiny": pipes["small"]}, stop="all_exhausted")
    other.load_state_dict(state)
    with pytest.raises(StateError, match=r"settings\[0\]\.names: checkpoint has"):
        next(iter(other))

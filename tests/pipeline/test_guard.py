"""Equal batches per rank: in process for every topology, then under real ``torchrun``."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import torchseq as ts
from tests.conftest import write_jsonl
from tests.support.launch import torchrun
from tests.support.topology import run_everywhere
from torchseq.context import Context
from torchseq.errors import BalanceWarning

# Very different shard sizes, an empty one included.
SIZES = [3, 700, 0, 41, 1200, 1, 260, 95]


def rows(start: int, n: int) -> list[dict[str, Any]]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    return [
        {"anchor": f"query {i}", "positive": " ".join(words[: 1 + i % 5] * (1 + i % 9)), "guid": i}
        for i in range(start, start + n)
    ]


@pytest.fixture
def uneven_shards(tmp_path: Path) -> list[str]:
    paths, start = [], 0
    for k, size in enumerate(SIZES):
        paths.append(write_jsonl(tmp_path / f"part-{k:03d}.jsonl.gz", rows(start, size)))
        start += size
    return paths


@pytest.mark.parametrize(("world_size", "num_workers"), [(2, 2), (3, 3)])
@pytest.mark.parametrize("kind", ["batch", "bucket", "tokens", "records", "batch-drop_last"])
@pytest.mark.parametrize("policy", ["partial", "drop", "pad"])
def test_equal_batches_exactly_once(uneven_shards, tokenizer_file, world_size, num_workers, kind, policy):
    read = ts.read_jsonl(uneven_shards).shuffle(buffer_size=50, seed=1).balance(policy)
    pipe = {
        "batch": read.batch(16),
        "batch-drop_last": read.batch(16, drop_last=True),
        "bucket": read.tokenize(tokenizer_file, max_length=24).bucket(16, pool_batches=3),
        "tokens": read.tokenize(tokenizer_file, max_length=24).batch_by_tokens(400, pool_size=100),
        "records": read,
    }[kind]
    report = pipe.balance_report(world_size=world_size)
    per_rank = run_everywhere(pipe, world_size, num_workers)
    batches = {b for b, _ in per_rank}
    assert batches == {report["batches_per_rank"]}, f"ranks yielded {[b for b, _ in per_rank]} batches"
    assert len(pipe.with_topology(1, world_size)) == report["batches_per_rank"]
    delivered = Counter(g for _, gs in per_rank for g in gs)
    source = set(range(sum(SIZES)))
    missing = source - set(delivered)
    repeats = sum(c - 1 for c in delivered.values())
    assert set(delivered) <= source
    assert len(missing) == report["dropped"] and repeats == report["repeated"]
    bound = world_size * report["quantum"]
    assert len(missing) < bound and repeats < bound
    if report["policy"] == "partial":
        assert not missing and repeats < world_size


def test_token_budget_holds_when_balanced(uneven_shards, tokenizer_file):
    from torchseq.batching.lengths import padded_tokens

    pipe = ts.read_jsonl(uneven_shards).tokenize(tokenizer_file, max_length=24).batch_by_tokens(400, pool_size=100)
    for rank in range(2):
        for batch in pipe.iterate(Context(rank, 2, 0, 1)):
            assert padded_tokens(batch) <= 400


def test_filter_is_evened_out_by_the_step_guard(uneven_shards):
    pipe = ts.read_jsonl(uneven_shards).filter(lambda r: r["guid"] % 5 != 0).batch(16)
    expected = len(pipe.with_topology(0, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BalanceWarning)
        per_rank = run_everywhere(pipe, 2, 2)
    assert [b for b, _ in per_rank] == [expected, expected]
    assert any("repeated" in str(w.message) for w in caught if issubclass(w.category, BalanceWarning))


def test_guard_fails_loudly_when_a_worker_has_nothing(uneven_shards):
    pipe = ts.read_jsonl(uneven_shards).filter(lambda r: False).batch(16)
    with pytest.raises(ts.DataError, match="rank 0 worker 0 epoch 0: .*nothing to repeat"):
        list(pipe.iterate(Context(0, 2, 0, 1)))


def test_single_process_needs_no_index(tmp_path, make_shards):
    shards = make_shards([5, 7])
    assert [len(b) for b in ts.read_jsonl(shards).batch(4)] == [4, 4, 4]
    assert not list(tmp_path.glob(".torchseq-index.json"))


def test_len_is_unknown_where_it_cannot_be_known(uneven_shards, tokenizer_file):
    with pytest.raises(TypeError, match="balancing is off"):
        len(ts.read_jsonl(uneven_shards).batch(8).balance("off"))
    with pytest.raises(TypeError, match="batch_by_tokens"):
        len(ts.read_jsonl(uneven_shards).tokenize(tokenizer_file).batch_by_tokens(256))
    with pytest.raises(TypeError, match="more than once"):
        len(ts.read_jsonl(uneven_shards).batch(8).batch(2))
    assert len(ts.read_jsonl(uneven_shards).batch(8)) == -(-sum(SIZES) // 8)
    assert bool(ts.read_jsonl(uneven_shards).balance("off"))


def test_torchrun_two_ranks_two_workers(uneven_shards, tokenizer_file, tmp_path, subprocess_env):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"shards": uneven_shards, "tokenizer": tokenizer_file}))
    out = tmp_path / "out"
    script = Path(__file__).resolve().parents[1] / "support" / "ddp_script.py"
    done = torchrun(str(script), [str(config), str(out)], subprocess_env, timeout=240)
    # On a stall the ranks print every stack (tests/support/ddp_script.py): show all of it.
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-60000:]}"
    ranks = [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]
    source = set(range(sum(SIZES)))
    for name in ranks[0]:
        epochs = list(zip(ranks[0][name], ranks[1][name], strict=True))
        for first, second in epochs:
            assert first["steps"] == second["steps"] == first["len"], name
            assert first["all_steps"] == 2 * first["steps"], name
            assert first["report"] == second["report"], name
        if name == "batch-wrap":
            delivered = Counter(g for pair in epochs for run in pair for g in run["guids"])
            total = sum(pair[0]["report"]["delivered"] for pair in epochs)
            assert sum(delivered.values()) == total
            assert set(delivered.values()) <= {total // len(source), -(-total // len(source))}
            continue
        (first, second), = epochs
        delivered = Counter(first["guids"] + second["guids"])
        report = first["report"]
        if name.startswith("filter"):
            assert set(delivered) == {g for g in source if g % 7}, name
            continue
        missing = source - set(delivered)
        repeats = sum(c - 1 for c in delivered.values())
        assert (len(missing), repeats) == (report["dropped"], report["repeated"]), name
        if report["policy"] == "partial":
            assert not missing and not repeats, name


def test_webdataset_shards_split_inside_tars(tmp_path):
    import webdataset as wds

    paths, start = [], 0
    for k, size in enumerate([57, 2, 0, 131]):
        path = tmp_path / f"w-{k}.tar"
        with wds.TarWriter(str(path)) as sink:
            for record in rows(start, size):
                sink.write({"__key__": f"{record['guid']:06d}", "json": record})
        paths.append(str(path))
        start += size
    pipe = ts.read_webdataset(paths).shuffle(20, seed=4).batch(8)
    per_rank = run_everywhere(pipe, 3, 2)
    assert {b for b, _ in per_rank} == {len(pipe.with_topology(0, 3))}
    assert sorted(g for _, gs in per_rank for g in gs) == list(range(190))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_dataloader_len_is_what_it_yields(uneven_shards, num_workers):
    from torch.utils.data import DataLoader

    pipe = ts.read_jsonl(uneven_shards).shuffle(30, seed=0).batch(16)
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
    expected = len(loader)  # DataLoader warns (an error here) if it yields more than this
    assert expected == -(-sum(SIZES) // 16)
    assert sum(1 for _ in loader) == expected

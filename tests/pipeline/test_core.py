"""End-to-end behaviour through real DataLoader workers."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import anchor_index, pair, write_jsonl
from torchseq.errors import RecordLevelSplitWarning


def delivered(pipe: ts.Pipeline, num_workers: int, **loader_kwargs: object) -> list[int]:
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers, **loader_kwargs)
    out: list[int] = []
    for batch in loader:
        out.extend(anchor_index(r["anchor"]) for r in batch)
    return out


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("sizes", [[40, 7, 33, 25, 1, 60, 12, 9], [50, 3, 70]])
def test_every_record_exactly_once(make_shards: Callable[..., list[str]], sizes: list[int], num_workers: int) -> None:
    shards = make_shards(sizes)
    pipe = ts.read_jsonl(shards).shuffle(buffer_size=16, seed=3).batch(5)
    with warnings.catch_warnings():
        # 3 shards < 3 workers x 1 rank warns once: expected here.
        warnings.simplefilter("ignore", RecordLevelSplitWarning)
        got = delivered(pipe, num_workers)
    assert Counter(got) == Counter(range(sum(sizes)))


def test_record_level_split_warns_and_says_why(make_shards: Callable[..., list[str]]) -> None:
    # Balanced pipelines split shards by item ranges; the stride split is the unbalanced fallback.
    pipe = ts.read_jsonl(make_shards([5])).balance("off").with_topology(0, 2).batch(2)
    with pytest.warns(RecordLevelSplitWarning, match=r"1 shard\(s\) for 2 workers.*splitting by record"):
        delivered(pipe, 0)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_the_data(make_shards: Callable[..., list[str]], world_size: int) -> None:
    sizes = [13, 8, 21, 5, 17]
    shards = make_shards(sizes)
    seen: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordLevelSplitWarning)
        for rank in range(world_size):
            pipe = ts.read_jsonl(shards).shuffle(8, seed=1).with_topology(rank, world_size).batch(4)
            seen += delivered(pipe, 2)
    assert Counter(seen) == Counter(range(sum(sizes)))


def order(shards: list[str], epoch: int, seed: int = 0, num_workers: int = 2, **kw: object) -> list[int]:
    pipe = ts.read_jsonl(shards).shuffle(buffer_size=32, seed=seed).batch(8)
    pipe.set_epoch(epoch)
    return delivered(pipe, num_workers, **kw)


def test_same_seed_same_order_new_epoch_reshuffles(make_shards: Callable[..., list[str]]) -> None:
    shards = make_shards([30] * 6)
    first, again = order(shards, 0), order(shards, 0)
    assert first == again
    assert order(shards, 1) != first
    assert order(shards, 0, seed=1) != first
    assert sorted(order(shards, 1)) == sorted(first) == list(range(180))


@pytest.mark.parametrize("persistent", [False, True])
def test_set_epoch_reaches_workers(make_shards: Callable[..., list[str]], persistent: bool) -> None:
    shards = make_shards([25] * 4)
    pipe = ts.read_jsonl(shards).shuffle(buffer_size=32, seed=0).batch(8)
    loader = DataLoader(pipe, batch_size=None, num_workers=2, persistent_workers=persistent)
    per_epoch = []
    for epoch in range(3):
        pipe.set_epoch(epoch)
        per_epoch.append([anchor_index(r["anchor"]) for batch in loader for r in batch])
    # Each epoch equals a fresh run of that epoch: the workers saw the new epoch.
    for epoch, got in enumerate(per_epoch):
        assert got == order(shards, epoch)
    assert len({tuple(x) for x in per_epoch}) == 3


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_first_set_epoch_after_the_workers_started_reaches_them(
    make_shards: Callable[..., list[str]], context: str
) -> None:
    # Shared memory is allocated lazily: a pipeline iterated by persistent
    # workers before any set_epoch must still see the main process's epochs.
    shards = make_shards([25] * 4)
    pipe = ts.read_jsonl(shards).shuffle(buffer_size=32, seed=0).batch(8)
    loader = DataLoader(pipe, batch_size=None, num_workers=2, persistent_workers=True,
                        multiprocessing_context=context)
    first = [anchor_index(r["anchor"]) for batch in loader for r in batch]
    pipe.set_epoch(1)
    second = [anchor_index(r["anchor"]) for batch in loader for r in batch]
    assert first == order(shards, 0)
    assert second == order(shards, 1) != first


def test_building_a_pipeline_allocates_no_shared_memory(make_shards: Callable[..., list[str]]) -> None:
    import torch

    threads = torch.get_num_threads()
    pipe = ts.read_jsonl(make_shards([5])).shuffle(buffer_size=4).batch(2).map(len).filter(bool)
    assert not pipe._shared.allocated  # every fluent call used to allocate an epoch tensor and a stats table
    assert torch.get_num_threads() == threads
    assert pipe.epoch == 0 and sum(pipe) == 5
    assert pipe._shared.allocated  # iterating allocates, once


RUN_TWICE = """
import hashlib
import torchseq as ts
from torch.utils.data import DataLoader
from torchseq.tools.sample import sample_shards, sample_tokenizer
pipe = ts.read_jsonl(sample_shards()).shuffle(500, seed=7).tokenize(sample_tokenizer(), 64).bucket(32).collate()
for epoch in (0, 1):
    pipe.set_epoch(epoch)
    h = hashlib.sha256()
    for batch in DataLoader(pipe, batch_size=None, num_workers=2):
        for column in ("anchor", "positive"):
            h.update(batch[column]["input_ids"].numpy().tobytes())
    print(h.hexdigest())
"""


def test_same_seed_same_batches_in_separate_runs(subprocess_env: dict[str, str]) -> None:
    # Two processes at once: each prints the digest of epoch 0, then of epoch 1.
    procs = [subprocess.Popen([sys.executable, "-c", RUN_TWICE], env=subprocess_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    digests = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        digests.append(out.split())
    first, second = digests
    assert len(first) == 2 and first == second
    assert first[0] != first[1]


def test_malformed_line_reported_from_inside_a_worker(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(10)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(pair(10)) + "\n" + json.dumps(pair(11)) + "\n{not json\n")
    pipe = ts.read_jsonl([good, str(bad)]).batch(4)
    with pytest.raises(ts.DataError) as info:
        delivered(pipe, 2)
    assert f"{bad}:3: invalid JSON" in str(info.value)


def test_skip_delivers_every_valid_record(tmp_path: Path) -> None:
    rows: list[str] = []
    valid: list[int] = []
    for i in range(60):
        if i % 7 == 3:
            rows.append(["{broken", '["only one"]', '["a", 5]', "\"just a string\""][i % 4])
        else:
            rows.append(json.dumps(pair(i)))
            valid.append(i)
    shards = []
    for k in range(3):
        path = tmp_path / f"s{k}.jsonl"
        path.write_text("\n".join(rows[k * 20:(k + 1) * 20]) + "\n")
        shards.append(str(path))
    pipe = ts.read_jsonl(shards, on_error="skip").batch(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordLevelSplitWarning)
        for workers in (0, 2):
            assert Counter(delivered(pipe, workers)) == Counter(valid)


def test_warn_policy_warns_per_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps(pair(0)) + "\n[1, 2]\n" + json.dumps(pair(2)) + "\n")
    with pytest.warns(ts.DataWarning, match=r"w\.jsonl:2: field 'list\[0\]' must be a string"):
        got = list(ts.read_jsonl(str(path), on_error="warn"))
    assert [anchor_index(r["anchor"]) for r in got] == [0, 2]


def test_missing_shard_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ts.ShardNotFoundError, match="nope.jsonl.gz: shard not found"):
        list(ts.read_jsonl(str(tmp_path / "nope.jsonl.gz")))


def test_invalid_arguments_fail_early(tokenizer_file: str) -> None:
    with pytest.raises(ts.ConfigError, match="on_error"):
        ts.read_jsonl("x.jsonl", on_error="ignore")
    with pytest.raises(ts.ConfigError, match="buffer_size"):
        ts.read_jsonl("x.jsonl").shuffle(0)
    with pytest.raises(ts.ConfigError, match="tokenizer file not found"):
        ts.read_jsonl("x.jsonl").tokenize("missing/tokenizer.json")
    with pytest.raises(ts.ConfigError, match="batch_size"):
        ts.read_jsonl("x.jsonl").batch(0)
    with pytest.raises(ts.ConfigError, match="right after the reader"):
        ts.read_jsonl("x.jsonl").batch(2).shuffle(10)


def test_map_and_filter(make_shards: Callable[..., list[str]]) -> None:
    pipe = (ts.read_jsonl(make_shards([20]))
            .filter(lambda r: anchor_index(r["anchor"]) % 2 == 0)
            .map(lambda r: {**r, "anchor": r["anchor"].upper()}))
    got = list(pipe)
    assert len(got) == 10 and all(r["anchor"].startswith("QUERY") for r in got)


def test_pipeline_is_immutable(make_shards: Callable[..., list[str]]) -> None:
    base = ts.read_jsonl(make_shards([5]))
    batched = base.batch(2)
    assert base is not batched and len(list(base)) == 5 and len(list(batched)) == 3


def test_then_appends_a_stage_of_ones_own_and_refuses_anything_else(make_shards: Callable[..., list[str]]) -> None:
    from tests.pipeline.test_stats import DropOdd

    pipe = ts.read_jsonl(make_shards([10])).then(DropOdd())
    assert len(list(pipe)) == 5 and pipe.stats().counters["deferred"] == 5
    with pytest.raises(ts.ConfigError, match="then: builtin_function_or_method is not a stage"):
        ts.read_jsonl(make_shards([1])).then(len)

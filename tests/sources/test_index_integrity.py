"""The record-count index under faults, staleness and tampering, for local and remote shards.

Counts plan every epoch (equal batches per rank, ``len()``), so a wrong count
loses or repeats records. These tests break the index the ways the real world
does -- a store failing while a shard is counted, a shard rewritten without
its size or modification time changing, an object replaced behind an HTTP
server that gives no validators, an index file edited by hand -- and check
that every record is still delivered exactly once, or that what was not is
said (an ``IndexWarning`` naming the shard and both counts, counters in
``pipe.stats()``) and put right for the next epoch.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import anchor_index, pair, write_jsonl
from tests.support.badinput import gzip_bytes, jsonl_bytes
from tests.support.servers import Faults, s3_bucket, serve_files
from tests.support.topology import run_everywhere
from torchseq.errors import BalanceWarning, IndexWarning
from torchseq.sources.index import INDEX_NAME, INDEX_VERSION, index_paths, shard_counts
from torchseq.tools.sample import data_dir

RECORDS = 300
FAST = ts.RetryPolicy(attempts=2, initial_delay=0.001, max_delay=0.002, request_bytes=1 << 20)
BUCKET = "counts"


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/sources/conftest.py


# ------------------------------------------------------------------ helpers
def source_of(pipe: ts.Pipeline) -> Any:
    return pipe._source


def guids(batch: Any) -> list[int]:
    return [anchor_index(record["anchor"]) for record in batch]


def delivered(pipe: ts.Pipeline, epoch: int, num_workers: int = 2) -> list[int]:
    """Anchor indexes of one epoch read through a DataLoader (``pipe`` batches records)."""
    pipe.set_epoch(epoch)
    out: list[int] = []
    for batch in DataLoader(pipe, batch_size=None, num_workers=num_workers):
        out.extend(guids(batch))
    return out


def same_size(first: list[int], second: list[int]) -> tuple[bytes, bytes]:
    """Plain JSON Lines of two sets of pairs, the shorter padded with spaces to the same size."""
    a, b = jsonl_bytes(first), jsonl_bytes(second)
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    padded = short[:-1] + b" " * (len(long) - len(short)) + b"\n"
    return (padded, long) if short is a else (long, padded)


def gz_shards(count: int = 4) -> dict[str, bytes]:
    return {
        f"/data/train-{k:05d}.jsonl.gz": gzip_bytes(jsonl_bytes(range(k * RECORDS, (k + 1) * RECORDS)))
        for k in range(count)
    }


@contextmanager
def store(kind: str, files: dict[str, bytes], faults: Faults) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """``files`` served over HTTP or from moto's S3; yields the shard URLs and the reader options."""
    if kind == "http":
        with serve_files(files, faults) as url:
            yield [url + path for path in files], {}
        return
    with s3_bucket(BUCKET, faults, objects={p.rpartition("/")[2]: d for p, d in files.items()}) as (options, _):
        yield [f"s3://{BUCKET}/{path.rpartition('/')[2]}" for path in files], {"storage_options": options}


def _count(shards: list[str]) -> None:
    shard_counts(source_of(ts.read_jsonl(shards)))


def build_index_elsewhere(shards: list[str]) -> None:
    """Count in another process, as an earlier run would have: nothing is known in this one."""
    child = multiprocessing.get_context("fork").Process(target=_count, args=(shards,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0


def index_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, IndexWarning)]


# ------------------------------------------------------------------ 1. faults while counting
@pytest.mark.parametrize("kind", ["s3", "http"])
def test_remote_fault_while_counting_is_counted_again(kind: str) -> None:
    """503s beyond the retry budget while shard 1 is counted: its records are lost that epoch, reported,
    and the next epoch (and a later run) counts the shard again once the store is back."""
    files = gz_shards()
    down = [True]

    def rule(method: str, path: str, start: int | None, number: int) -> str:
        return "status:503" if down[0] and method == "GET" and path.endswith("train-00001.jsonl.gz") else "ok"

    with store(kind, files, Faults(rule)) as (spec, options):
        pipe = ts.read_jsonl(spec, on_error="skip", retry=FAST, **options).batch(100)
        first = delivered(pipe, 0)
        assert sorted(first) == [*range(0, RECORDS), *range(2 * RECORDS, 4 * RECORDS)]
        assert pipe.stats().skipped == {"remote error": 1}
        down[0] = False  # the outage is over: size and ETag never changed
        assert sorted(delivered(pipe, 1)) == list(range(4 * RECORDS))
        later = ts.read_jsonl(spec, on_error="skip", retry=FAST, **options).batch(100)
        assert len(later) == 12
        assert sorted(delivered(later, 0)) == list(range(4 * RECORDS))


@pytest.mark.parametrize("fault", ["unreadable", "directory", "corrupt"])
def test_local_fault_while_counting_is_counted_again(tmp_path: Path, fault: str) -> None:
    """A shard that fails while counted (a real OSError, or a stream corrupt at the time) is counted
    again by the next run once the fault is gone -- even with the same bytes and mtime as before."""
    shards = [write_jsonl(tmp_path / f"part-{k}.jsonl.gz", [pair(i) for i in range(k * 50, (k + 1) * 50)])
              for k in range(3)]
    victim = Path(shards[1])
    good, stat = victim.read_bytes(), victim.stat()
    if fault == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a file whatever its mode (the 'directory' case gives a real OSError)")
        victim.chmod(0)
    elif fault == "directory":
        victim.unlink()
        victim.mkdir()  # reading it raises IsADirectoryError
    else:  # the second half of the gzip stream zeroed, size and mtime kept
        half = len(good) // 2
        victim.write_bytes(good[:half] + bytes(len(good) - half))
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pipe = ts.read_jsonl(shards, on_error="skip").batch(10)
    first = set(delivered(pipe, 0))
    assert set(range(0, 50)) | set(range(100, 150)) <= first and not set(range(50, 100)) <= first
    assert pipe.stats().num_skipped >= 1
    if fault == "unreadable":
        victim.chmod(0o644)
    elif fault == "directory":
        victim.rmdir()
    victim.write_bytes(good)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    later = ts.read_jsonl(shards, on_error="skip").batch(10)
    assert sorted(delivered(later, 0)) == list(range(150))
    assert later.stats().num_skipped == 0


# ------------------------------------------------------------------ 2. staleness and tampering
def test_same_size_same_mtime_rewrite_is_counted_again(tmp_path: Path) -> None:
    """A copy tool that keeps mtime, a same-length edit: the key still notices (``st_ctime`` changes)."""
    before, after = same_size(list(range(10)), list(range(14)))
    shard = tmp_path / "grows.jsonl"
    shard.write_bytes(before)
    other = write_jsonl(tmp_path / "other.jsonl", [pair(i) for i in range(100, 130)])
    pipe = ts.read_jsonl([str(shard), other]).batch(4)
    assert len(pipe.with_topology(0, 2)) == 5  # 40 records, 2 ranks x 4
    stat = shard.stat()
    shard.write_bytes(after)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert shard_counts(source_of(pipe)) == [14, 30]
    per_rank = run_everywhere(pipe, 2, 2, key=guids, epoch=0)
    assert [b for b, _ in per_rank] == [6, 6]
    assert sorted(g for _, got in per_rank for g in got) == [*range(14), *range(100, 130)]


EDITS: dict[str, Any] = {
    "count of 3": {"records": 3},
    "negative count": {"records": -5},
    "float count": {"records": 1e6},
    "endless count": {"records": 1e30},
    "string count": {"records": "17"},
    "bool count": {"records": True},
    "no count": {"records": None},
    "list count": {"records": [17]},
    "key not a string": {"key": 5},
    "entry not an object": "17",
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_hand_edited_entries_are_not_trusted(make_shards: Any, tmp_path: Path, edit: str) -> None:
    shards = make_shards([17, 30])
    build_index_elsewhere(shards)
    index = tmp_path / INDEX_NAME
    data = json.loads(index.read_text())
    name = Path(shards[0]).name
    change = EDITS[edit]
    data["shards"][name] = {**data["shards"][name], **change} if isinstance(change, dict) else change
    index.write_text(json.dumps(data))
    later = ts.read_jsonl(shards).batch(4)
    with pytest.warns(UserWarning) as caught:
        assert len(later.with_topology(0, 2)) == 6
    (message,) = index_warnings(caught.list)
    assert message.startswith(f"{index}: ") and name in message and "counted again" in message
    assert shard_counts(source_of(later)) == [17, 30]  # rewritten: no warning the second time
    assert sorted(g for _, got in run_everywhere(later, 2, 2, key=guids, epoch=0) for g in got) == list(range(47))


@pytest.mark.parametrize("content", ['{"version": V, "shards": []}', '{"version": V, "shards": "x"}', "[1, 2]"])
def test_malformed_index_files_are_not_trusted(make_shards: Any, tmp_path: Path, content: str) -> None:
    shards = make_shards([17, 30])
    (tmp_path / INDEX_NAME).write_text(content.replace("V", str(INDEX_VERSION)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(ts.read_jsonl(shards).batch(4).with_topology(0, 2)) == 6
    if content != "[1, 2]":  # not an index at all: replaced without a word
        (message,) = index_warnings(caught)
        assert message.startswith(f"{tmp_path / INDEX_NAME}: ")
    assert {e["records"] for e in json.loads((tmp_path / INDEX_NAME).read_text())["shards"].values()} == {17, 30}


# A count that goes stale without the key changing: an HTTP server that sends no
# validators (no ETag, no Last-Modified) gives the index only the object's size.
def serve_without_validators(files: dict[str, bytes]) -> Any:
    """``serve_files`` without ETags."""
    return serve_files(files, Faults(), etags=False)


@pytest.fixture
def http_shards() -> Iterator[tuple[str, dict[str, bytes]]]:
    files = {"/d/a.jsonl": b"", "/d/b.jsonl": jsonl_bytes(range(100, 130))}
    with serve_without_validators(files) as url:
        yield url, files


def http_pipe(url: str) -> ts.Pipeline:
    return ts.read_jsonl([url + "/d/a.jsonl", url + "/d/b.jsonl"], retry=FAST).batch(4)


def test_shard_longer_than_its_count(http_shards: tuple[str, dict[str, bytes]]) -> None:
    url, files = http_shards
    before, after = same_size(list(range(10)), list(range(14)))
    files["/d/a.jsonl"] = before
    pipe = http_pipe(url)
    epoch0 = run_everywhere(pipe, 2, 2, key=guids, epoch=0)
    assert sorted(g for _, got in epoch0 for g in got) == [*range(10), *range(100, 130)]
    files["/d/a.jsonl"] = after  # same size, 4 more records
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epoch1 = run_everywhere(pipe, 2, 2, key=guids, epoch=1)
    (message,) = index_warnings(caught)
    assert message.startswith(f"{url}/d/a.jsonl: the shard holds 14 records, its record-count index says 10")
    assert "4 record(s) after the first 10 were not delivered this epoch" in message
    assert [b for b, _ in epoch1] == [b for b, _ in epoch0] == [5, 5]
    got = Counter(g for _, gs in epoch1 for g in gs)
    assert set(got.values()) == {1} and set(got) == {*range(10), *range(100, 130)}
    assert pipe.stats().counters["index"] == {"undelivered": 4, "missing": 0}
    # Epoch 1 stays planned with the count it started with (a late process agrees); epoch 2 has all.
    assert pipe.balance_report(world_size=2, epoch=1)["records"] == 40
    assert pipe.balance_report(world_size=2, epoch=2)["records"] == 44
    with warnings.catch_warnings():
        warnings.simplefilter("error", IndexWarning)
        epoch2 = run_everywhere(pipe, 2, 2, key=guids, epoch=2)
    assert [b for b, _ in epoch2] == [6, 6]
    assert sorted(g for _, gs in epoch2 for g in gs) == [*range(14), *range(100, 130)]


def test_shard_shorter_than_its_count(http_shards: tuple[str, dict[str, bytes]]) -> None:
    url, files = http_shards
    before, after = same_size(list(range(14)), list(range(7)))
    files["/d/a.jsonl"] = before
    pipe = http_pipe(url)
    assert len(pipe.with_topology(0, 2)) == 6
    files["/d/a.jsonl"] = after  # same size, 7 records fewer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epoch0 = run_everywhere(pipe, 2, 2, key=guids, epoch=0)
    messages = index_warnings(caught)
    assert messages and all(m.startswith(f"{url}/d/a.jsonl: the shard holds 7 records, its record-count "
                                         "index says 14") for m in messages)
    assert any(issubclass(w.category, BalanceWarning) for w in caught)  # the guard evens the ranks out
    assert [b for b, _ in epoch0] == [6, 6]
    assert set(g for _, gs in epoch0 for g in gs) == {*range(7), *range(100, 130)}
    # 7 planned records were not there; the step guard's repeat passes read the short range again
    # and count what they miss too (as they count records and skips).
    index = pipe.stats().counters["index"]
    assert index["undelivered"] == 0 and index["missing"] >= 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epoch1 = run_everywhere(pipe, 2, 2, key=guids, epoch=1)
    assert [b for b, _ in epoch1] == [5, 5]
    assert sorted(g for _, gs in epoch1 for g in gs) == [*range(7), *range(100, 130)]


def test_shard_counted_empty_that_holds_records(http_shards: tuple[str, dict[str, bytes]]) -> None:
    url, files = http_shards
    files["/d/a.jsonl"] = b"\n" * len(jsonl_bytes([5, 6]))
    pipe = http_pipe(url)
    assert len(pipe.with_topology(0, 2)) == 4
    files["/d/a.jsonl"] = jsonl_bytes([5, 6])
    with pytest.warns(IndexWarning, match=r"a\.jsonl: the shard holds 2 records, its record-count index says 0"):
        epoch0 = run_everywhere(pipe, 2, 1, key=guids, epoch=0)
    assert sorted(g for _, gs in epoch0 for g in gs) == list(range(100, 130))
    assert sorted(g for _, gs in run_everywhere(pipe, 2, 1, key=guids, epoch=1) for g in gs) == [5, 6, *range(100, 130)]


# ------------------------------------------------------------------ 15. HTTP shards are counted once
def test_http_shards_are_counted_once() -> None:
    files = gz_shards()
    faults = Faults()
    with serve_files(files, faults) as url:
        pipe = ts.read_jsonl([url + path for path in files], retry=FAST).batch(RECORDS)
        assert len(pipe) == len(pipe) == 4
        for epoch in (0, 1):
            assert sorted(delivered(pipe, epoch)) == list(range(4 * RECORDS))
        assert len(pipe) == 4
    reads = Counter(s.path for s in faults.seen(method="GET") if s.start is not None)
    # Counted once (by the first len()), then read once per epoch by the worker that owns it.
    assert reads == {path: 3 for path in files}
    (written,) = index_paths(source_of(pipe))
    assert len(json.loads(Path(written).read_text())["shards"]) == 4


# ------------------------------------------------------------------ 20. where the index lives
def test_bundled_sample_is_never_indexed_inside_the_package(sample_files: list[str], private_cache: Path) -> None:
    def package_indexes() -> dict[Path, int]:  # one an older torchseq left there must stay as it was too
        return {p: p.stat().st_mtime_ns for p in data_dir().glob(".torchseq-index*")}

    before = package_indexes()
    pipe = ts.read_jsonl(sample_files).batch(64)
    assert len(pipe.with_topology(0, 2)) == 32
    assert package_indexes() == before
    (written,) = index_paths(source_of(pipe))
    assert written.startswith(str(private_cache))


def test_site_packages_directories_are_never_written(tmp_path: Path, subprocess_env: dict[str, str],
                                                     private_cache: Path) -> None:
    subprocess_env["PYTHONUSERBASE"] = str(tmp_path / "userbase")
    subprocess_env["TORCHSEQ_CACHE_DIR"] = str(private_cache)
    site = subprocess.run([sys.executable, "-c", "import site; print(site.getusersitepackages())"],
                          env=subprocess_env, capture_output=True, text=True, check=True).stdout.strip()
    data = Path(site) / "somepkg" / "data"
    data.mkdir(parents=True)
    shards = [write_jsonl(data / f"p{k}.jsonl.gz", [pair(i) for i in range(k * 9, k * 9 + 9)]) for k in range(2)]
    code = f"import torchseq as ts; print(len(ts.read_jsonl({shards!r}).batch(3).with_topology(0, 2)))"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3"]
    assert sorted(p.name for p in data.iterdir()) == ["p0.jsonl.gz", "p1.jsonl.gz"]
    assert list((private_cache / "index").glob("*.json"))


def test_index_dir_option_takes_precedence(make_shards: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           private_cache: Path) -> None:
    monkeypatch.setenv("TORCHSEQ_INDEX_DIR", str(tmp_path / "from-env"))
    shards = make_shards([4, 5])
    pipe = ts.read_jsonl(shards, index_dir=str(tmp_path / "mine")).batch(3)
    assert len(pipe.with_topology(0, 2)) == 2
    (written,) = index_paths(source_of(pipe))
    assert Path(written).parent == tmp_path / "mine"
    assert not (tmp_path / INDEX_NAME).exists() and not (tmp_path / "from-env").exists()
    assert not (private_cache / "index").exists()
    with pytest.raises(ts.ConfigError, match="index_dir must be a path"):
        ts.read_jsonl(shards, index_dir=3)


# ------------------------------------------------------------------ 2. under real torchrun, 2 ranks x 2 workers
DDP_SCRIPT = '''
import json, sys
from datetime import timedelta
import torch, torch.distributed as dist
from torch.utils.data import DataLoader
import torchseq as ts

config, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
result = {}
for name, shards in config.items():
    pipe = ts.read_jsonl(shards, retry=ts.RetryPolicy(attempts=2, initial_delay=0.001)).batch(4)
    epochs = []
    for epoch in (0, 1):
        pipe.set_epoch(epoch)
        # len() before the epoch, as a training loop asks it: after the epoch the other rank may
        # already plan the next one, which drops this epoch's planned count from the index.
        planned = len(pipe)
        got, steps = [], 0
        for batch in DataLoader(pipe, batch_size=None, num_workers=2):
            dist.all_reduce(torch.ones(1))  # a rank that runs short leaves the other waiting here
            steps += 1
            got.extend(int(r["anchor"].split()[1]) for r in batch)
        epochs.append({"len": planned, "steps": steps, "got": got,
                       "index": pipe.stats().counters.get("index")})
    result[name] = epochs
json.dump(result, open(f"{out}.{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
'''


def test_grown_shards_under_torchrun(tmp_path: Path, subprocess_env: dict[str, str],
                                     private_cache: Path) -> None:
    """A local shard rewritten with the same size and mtime, and an HTTP shard (no validators) that grew
    behind the server: every record is delivered once per epoch, ranks stay in step, and what the plan
    could not hold is said and delivered the next epoch."""
    from tests.support.launch import torchrun

    before, after = same_size(list(range(10)), list(range(14)))
    local = tmp_path / "local"
    local.mkdir()
    grown = local / "grows.jsonl"
    grown.write_bytes(before)
    local_spec = [str(grown), write_jsonl(local / "other.jsonl", [pair(i) for i in range(100, 130)])]
    files = {"/d/a.jsonl": before, "/d/b.jsonl": jsonl_bytes(range(100, 130))}
    with serve_without_validators(files) as url:
        http_spec = [url + "/d/a.jsonl", url + "/d/b.jsonl"]
        for spec in (local_spec, http_spec):
            build_index_elsewhere(spec)  # 10 + 30 records
        stat = grown.stat()
        grown.write_bytes(after)
        os.utime(grown, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        files["/d/a.jsonl"] = after
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"local": local_spec, "http": http_spec}))
        script = tmp_path / "grown_script.py"
        script.write_text(DDP_SCRIPT)
        subprocess_env["TORCHSEQ_CACHE_DIR"] = str(private_cache)
        done = torchrun(str(script), [str(config), str(tmp_path / "out")], subprocess_env, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    everything = [*range(14), *range(100, 130)]
    for name in ("local", "http"):
        epochs = list(zip(ranks[0][name], ranks[1][name], strict=True))
        for first, second in epochs:
            assert first["steps"] == second["steps"] == first["len"] == second["len"], (
                name, [{k: v for k, v in run.items() if k != "got"} for pair in epochs for run in pair])
        delivered = [Counter(first["got"] + second["got"]) for first, second in epochs]
        assert all(set(d.values()) == {1} for d in delivered), name
        assert sorted(delivered[1]) == everything, name  # the second epoch has every record
        if name == "local":  # st_ctime changed: counted again before planning, nothing lost
            assert sorted(delivered[0]) == everything
            assert [e["index"] for e in ranks[0][name] + ranks[1][name]] == [None] * 4
            continue
        assert sorted(delivered[0]) == [*range(10), *range(100, 130)]  # planned from 40 records
        assert [e["len"] for e in epochs[0]] == [5, 5] and [e["len"] for e in epochs[1]] == [6, 6]
        undelivered = sum((r[name][0]["index"] or {}).get("undelivered", 0) for r in ranks)
        assert undelivered == 4
    assert done.stderr.count(f"{url}/d/a.jsonl: the shard holds 14 records, its record-count index "
                             "says 10: 4 record(s) after the first 10 were not delivered this epoch") == 1
    assert "grows.jsonl" not in done.stderr

"""The record-count index: counts, where they are cached, when they are counted again."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import webdataset as wds

import torchseq as ts
from tests.conftest import pair, write_jsonl
from torchseq.sources.index import INDEX_NAME, index_paths, shard_counts

pytestmark = pytest.mark.usefixtures("private_cache")  # tests/sources/conftest.py


def source_of(pipe: ts.Pipeline) -> ts.sources.ShardSource:
    return pipe._source  # type: ignore[return-value]


def cached_entries(path: Path) -> dict[str, dict[str, object]]:
    return json.loads(path.read_text())["shards"]


def test_counts_match_what_the_reader_delivers(tmp_path: Path) -> None:
    plain = tmp_path / "blank.jsonl"
    # Blank lines are not records; a record is what the reader yields.
    plain.write_text("\n".join(json.dumps(pair(i)) + ("\n" if i % 3 == 0 else "") for i in range(20)) + "\n")
    tar = tmp_path / "s.tar"
    with wds.TarWriter(str(tar)) as sink:
        for i in range(13):
            sink.write({"__key__": f"{i:05d}", "json": {"anchor": f"a{i}", "positive": f"p{i}"}})
    gz = write_jsonl(tmp_path / "z.jsonl.gz", [pair(i) for i in range(7)])
    empty = write_jsonl(tmp_path / "empty.jsonl.gz", [])
    jsonl = ts.read_jsonl([str(plain), gz, empty])
    assert shard_counts(source_of(jsonl)) == [20, 7, 0] == [
        len(list(ts.read_jsonl(p))) for p in (str(plain), gz, empty)
    ]
    assert shard_counts(source_of(ts.read_webdataset(str(tar)))) == [13]


def test_cached_beside_the_shards_and_keyed_by_size_and_mtime(make_shards, tmp_path: Path) -> None:
    shards = make_shards([10, 20])
    source = source_of(ts.read_jsonl(shards))
    assert shard_counts(source) == [10, 20]
    index = tmp_path / INDEX_NAME
    assert index_paths(source) == [str(index)]
    assert {e["records"] for e in cached_entries(index).values()} == {10, 20}
    # A changed shard (new size and mtime) is counted again and the index updated.
    write_jsonl(Path(shards[1]), [pair(i) for i in range(33)])
    assert shard_counts(source) == [10, 33]
    assert sorted(e["records"] for e in cached_entries(index).values()) == [10, 33]


def test_rewrite_keeping_size_and_mtime_is_counted_again(make_shards, tmp_path: Path) -> None:
    shards = make_shards([10])
    source = source_of(ts.read_jsonl(shards))
    assert shard_counts(source) == [10]
    # Corrupt the shard but keep its size and mtime: st_ctime changes, so the
    # entry no longer applies and the shard is read again (and fails).
    stat = os.stat(shards[0])
    Path(shards[0]).write_bytes(b"\x00" * stat.st_size)
    os.utime(shards[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ts.DataError, match="corrupt compressed stream"):
        shard_counts(source)


def test_read_only_directory_uses_the_cache_dir(tmp_path: Path, private_cache: Path) -> None:
    data = tmp_path / "published"
    data.mkdir()
    shards = [write_jsonl(data / f"p{i}.jsonl", [pair(j) for j in range(i + 3)]) for i in range(3)]
    data.chmod(0o555)
    try:
        source = source_of(ts.read_jsonl(shards))
        assert shard_counts(source) == [3, 4, 5]
        assert not (data / INDEX_NAME).exists()
        (written,) = index_paths(source)
        assert written.startswith(str(private_cache))
        assert sorted(e["records"] for e in cached_entries(Path(written)).values()) == [3, 4, 5]
    finally:
        data.chmod(0o755)


def test_index_dir_setting_keeps_shard_directories_untouched(make_shards, tmp_path: Path, monkeypatch) -> None:
    where = tmp_path / "indexes"
    monkeypatch.setenv("TORCHSEQ_INDEX_DIR", str(where))
    shards = make_shards([4, 5])
    source = source_of(ts.read_jsonl(shards))
    assert shard_counts(source) == [4, 5]
    assert not (tmp_path / INDEX_NAME).exists()
    (written,) = index_paths(source)
    assert Path(written).parent == where


def test_remote_shards_are_indexed_in_the_cache_dir(private_cache: Path) -> None:
    fs = fsspec.filesystem("memory")
    for i, n in enumerate([6, 2]):
        fs.pipe(f"/idx-test/part-{i}.jsonl", "".join(json.dumps(pair(j)) + "\n" for j in range(n)).encode())
    try:
        pipe = ts.read_jsonl(["memory://idx-test/part-0.jsonl", "memory://idx-test/part-1.jsonl"])
        assert shard_counts(source_of(pipe)) == [6, 2]
        (written,) = index_paths(source_of(pipe))
        assert written.startswith(str(private_cache))
        assert len(pipe.batch(3).with_topology(0, 2)) == 2
    finally:
        fs.rm("/idx-test", recursive=True)


def test_missing_shard_raises_or_counts_zero(make_shards, tmp_path: Path) -> None:
    shards = make_shards([4]) + [str(tmp_path / "gone.jsonl.gz")]
    with pytest.raises(ts.ShardNotFoundError, match="gone.jsonl.gz: shard not found"):
        shard_counts(source_of(ts.read_jsonl(shards)))
    assert shard_counts(source_of(ts.read_jsonl(shards, on_error="skip"))) == [4, 0]
    assert "gone.jsonl.gz" not in cached_entries(tmp_path / INDEX_NAME)


def _count_in_child(shards: list[str], queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(shard_counts(source_of(ts.read_jsonl(shards))))


def test_concurrent_builders_agree(make_shards, tmp_path: Path) -> None:
    shards = make_shards([50, 7, 0, 120])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_count_in_child, args=(shards, queue)) for _ in range(4)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert results == [[50, 7, 0, 120]] * 4
    assert len(cached_entries(tmp_path / INDEX_NAME)) == 4


def test_len_comes_from_the_index(make_shards) -> None:
    shards = make_shards([100, 3, 61])
    pipe = ts.read_jsonl(shards).batch(10)
    assert len(pipe) == 17
    assert len(pipe.with_topology(0, 2)) == len(pipe.with_topology(1, 2)) == 9
    assert len(pipe.with_topology(0, 2).balance("drop")) == 8


def test_cli_index_prints_counts_and_policies(make_shards, tmp_path: Path, subprocess_env, private_cache) -> None:
    shards = make_shards([300, 41, 7])
    subprocess_env["TORCHSEQ_CACHE_DIR"] = str(private_cache)
    spec = str(tmp_path / "shard-{00000..00002}.jsonl.gz")
    done = subprocess.run(
        [sys.executable, "-m", "torchseq", "index", spec, "--world-size", "2", "--batch-size", "64"],
        env=subprocess_env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "348 records in 3 shards" in out
    assert f"index: {tmp_path / INDEX_NAME}" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (
        ["partial"], ["drop"], ["pad"], ["wrap"])}
    # 348 records over 2 ranks x 64: 3 steps, the last with 92 records.
    assert rows["partial"][:4] == ["3", "348", "0", "0"]
    assert rows["drop"][:4] == ["2", "256", "92", "0"]
    assert rows["pad"][:4] == ["3", "384", "0", "36"]
    assert len(shards) == 3

"""Reading JSONL and WebDataset shards; shard specs."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

import torchseq as ts
from tests.conftest import pair, write_jsonl
from torchseq.sources import expand_spec


def records(pipe: ts.Pipeline) -> list[dict[str, object]]:
    return list(pipe)


def test_brace_glob_and_list_specs(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"train-{i:05d}.jsonl.gz").write_bytes(b"")
    brace = expand_spec(str(tmp_path / "train-{00000..00002}.jsonl.gz"))
    glob = expand_spec(str(tmp_path / "train-*.jsonl.gz"))
    listed = expand_spec([str(tmp_path / "train-00001.jsonl.gz"), str(tmp_path / "train-00000.jsonl.gz")])
    assert brace == glob == [str(tmp_path / f"train-{i:05d}.jsonl.gz") for i in range(3)]
    assert listed == [str(tmp_path / "train-00001.jsonl.gz"), str(tmp_path / "train-00000.jsonl.gz")]


def test_empty_spec_and_unmatched_glob(tmp_path: Path) -> None:
    with pytest.raises(ts.ConfigError, match="empty"):
        expand_spec([])
    with pytest.raises(ts.ShardNotFoundError, match="matched no shards"):
        expand_spec(str(tmp_path / "nothing-*.jsonl"))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_plain_and_gzip(tmp_path: Path, suffix: str) -> None:
    rows = [pair(i) for i in range(50)]
    path = write_jsonl(tmp_path / f"a{suffix}", rows)
    got = records(ts.read_jsonl(path))
    assert [[r["anchor"], r["positive"]] for r in got] == rows
    if suffix.endswith(".gz"):
        assert gzip.decompress(Path(path).read_bytes()).startswith(b"[")


def test_mixed_formats_in_one_file_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(["a0", "p0"]),
        "",
        json.dumps({"texts": ["a1", "p1", "n1"], "guid": "x"}),
        json.dumps({"query": "a2", "pos": ["p2"], "neg": ["n2a", "n2b"]}),
        json.dumps({"set": ["a3", "p3"]}),
    ]
    path.write_text("\n".join(lines) + "\n")
    got = records(ts.read_jsonl(str(path)))
    assert [r["anchor"] for r in got] == ["a0", "a1", "a2", "a3"]
    assert got[1]["negatives"] == ["n1"] and got[1]["guid"] == "x"
    assert got[2]["negatives"] == ["n2a", "n2b"]


def test_fields_mapping_reads_arbitrary_dicts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}", "src": "x"} for i in range(5)])
    got = records(ts.read_jsonl(path, fields={"anchor": "question", "positive": "answer"}))
    assert got[3] == {"anchor": "q3", "positive": "a3", "src": "x"}


def write_wds(path: Path, samples: list[dict[str, object]]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def test_webdataset_json_members_read_back_identically(tmp_path: Path) -> None:
    rows = [pair(i) for i in range(40)]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    tar = write_wds(
        tmp_path / "a.tar",
        [{"__key__": f"s{i:05d}", "json": {"anchor": a, "positive": p}} for i, (a, p) in enumerate(rows)],
    )
    from_jsonl = [(r["anchor"], r["positive"]) for r in ts.read_jsonl(jsonl)]
    from_tar = [(r["anchor"], r["positive"]) for r in ts.read_webdataset(tar)]
    assert from_tar == from_jsonl
    assert [r["__key__"] for r in ts.read_webdataset(tar)][:2] == ["s00000", "s00001"]


def test_webdataset_text_members_and_tar_gz(tmp_path: Path) -> None:
    rows = [pair(i) for i in range(10)]
    tar = write_wds(
        tmp_path / "t.tar.gz",
        [{"__key__": f"k{i}", "anchor.txt": a, "positive.txt": p, "negatives.json": ["n"]}
         for i, (a, p) in enumerate(rows)],
    )
    got = list(ts.read_webdataset(tar))
    assert [(r["anchor"], r["positive"]) for r in got] == [tuple(r) for r in rows]
    assert got[0]["negatives"] == ["n"]


def test_webdataset_npy_members_become_tokens(tmp_path: Path) -> None:
    ids = np.array([2, 17, 3], dtype=np.uint16)
    tar = write_wds(tmp_path / "t.tar", [{"__key__": "k0", "anchor.npy": ids, "positive.npy": ids[:2]}])
    (record,) = list(ts.read_webdataset(tar))
    assert record["tokens"]["anchor"].tolist() == [2, 17, 3]
    assert record["tokens"]["anchor"].dtype == np.uint16


def test_webdataset_refuses_pickle_members(tmp_path: Path) -> None:
    tar = write_wds(
        tmp_path / "evil.tar",
        [{"__key__": "k0", "json": {"anchor": "a", "positive": "p"}, "pyd": {"x": 1}}],
    )
    with pytest.raises(ts.DataError, match=r"evil\.tar::k0\.pyd: pickle member refused"):
        list(ts.read_webdataset(tar))
    assert list(ts.read_webdataset(tar, on_error="skip")) == []


def test_sample_shards_are_bundled(sample_files: list[str]) -> None:
    got = list(ts.read_jsonl(sample_files))
    assert len(sample_files) == 4 and len(got) == 4000
    assert all(r["anchor"].strip() and r["positive"].strip() for r in got)
    assert len({(r["anchor"], r["positive"]) for r in got}) == 4000


def test_zero_record_shard_is_fine(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    full = write_jsonl(tmp_path / "full.jsonl", [pair(0)])
    assert len(list(ts.read_jsonl([str(empty), full]))) == 1


def test_repr_prints_the_graph(tokenizer_file: str) -> None:
    pipe = ts.read_jsonl("x.jsonl").shuffle(100).tokenize(tokenizer_file, 32).batch(4).collate()
    text = repr(pipe)
    for name in ("JsonlSource", "BufferShuffle", "Tokenize", "Batch", "Collate"):
        assert name in text
    assert io.StringIO(text).read().count("->") == 4


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["a.jsonl", "b.jsonl.gz", "s3://bucket/c.jsonl.zst"], "JsonlSource"),
        (["a.tar", "b.TAR.GZ", "c.tgz", "https://host/d.tar?sig=1", "e.tar.zst"], "WebDatasetSource"),
        ([], "JsonlSource"),
    ],
)
def test_one_rule_picks_the_reader(paths: list[str], expected: str) -> None:
    from torchseq.sources import reader_for

    assert reader_for(paths).__name__ == expected


def test_the_reader_rule_reads_directories_as_webdataset_and_refuses_a_mix(tmp_path: Path) -> None:
    from torchseq.sources import reader_for

    assert reader_for([str(tmp_path)]).__name__ == "WebDatasetSource"  # pre-tokenized output
    with pytest.raises(ts.ConfigError, match="mix tar archives and other files"):
        reader_for(["a.tar", "b.jsonl"])
    assert reader_for(["a.tar", "b.jsonl"], "jsonl").__name__ == "JsonlSource"
    with pytest.raises(ts.ConfigError, match="reader must be one of"):
        reader_for(["a.jsonl"], "parquet")


# A file name that is a shell command: `touch PWNED` runs if the name is ever taken for a pipe: spec.
TRAP = "pipe:touch PWNED; echo x"


def test_a_glob_result_is_never_a_pipe_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / f"{TRAP}.jsonl", [pair(0), pair(1)])
    write_jsonl(tmp_path / "plain.jsonl", [pair(2)])
    pipe = ts.read_jsonl("*.jsonl", allow_pipe=True)
    assert [r["anchor"] for r in pipe] == [pair(i)[0] for i in range(3)]  # the trap is read as a file
    assert expand_spec("*.jsonl") == [f"./{TRAP}.jsonl", "plain.jsonl"]
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_directory_listing_is_never_a_pipe_spec(suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tar = Path(write_wds(tmp_path / "plain.tar", [{"__key__": "k0", "json": {"anchor": "a", "positive": "p"}}]))
    data = tar.read_bytes()
    tar.unlink()
    (tmp_path / f"{TRAP}{suffix}").write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert [r["anchor"] for r in ts.read_webdataset(".", allow_pipe=True)] == ["a"]
    assert not (tmp_path / "PWNED").exists()


def test_a_brace_expansion_never_makes_a_pipe_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "plain.jsonl", [pair(0)])
    with pytest.raises(ts.ConfigError, match=r"pipe:touch PWNED; echo x\.jsonl: a brace expansion made a 'pipe:'"):
        list(ts.read_jsonl("{pipe:touch PWNED; echo x,plain}.jsonl", allow_pipe=True))
    assert not (tmp_path / "PWNED").exists()


def test_a_literal_pipe_spec_still_expands_its_braces(tmp_path: Path) -> None:
    """WebDataset's convention: ``pipe:curl .../shard-{000..009}.tar`` is one command per shard."""
    for i in range(2):
        write_jsonl(tmp_path / f"part-{i}.jsonl", [pair(i)])
    spec = f"pipe:cat {tmp_path}/part-{{0..1}}.jsonl"
    assert expand_spec(spec) == [f"pipe:cat {tmp_path}/part-{i}.jsonl" for i in range(2)]
    assert [r["anchor"] for r in ts.read_jsonl(spec, allow_pipe=True)] == [pair(0)[0], pair(1)[0]]

"""Pre-tokenized shards: written by ``torchseq pretokenize``, read back identically and fast."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset
from torch.utils.data import DataLoader

import torchseq as ts
from tests.support.resume import check_resume, fingerprint
from torchseq.cli import main as cli_main
from torchseq.errors import DataError
from torchseq.sources.manifest import MANIFEST_NAME as INDEX_NAME
from torchseq.sources.manifest import read_manifest as read_index
from torchseq.sources.npy import npy_bytes
from torchseq.sources.plaintar import PlainTar
from torchseq.tools.pretokenize import pretokenize


@pytest.fixture(scope="module")
def pretokenized(tmp_path_factory: pytest.TempPathFactory, sample_files: list[str], tokenizer_file: str) -> str:
    out = tmp_path_factory.mktemp("pretok") / "shards"
    code = cli_main([
        "pretokenize", *sample_files, "--tokenizer", tokenizer_file, "--max-length", "128",
        "--out", str(out), "--shard-size", "1000", "--no-progress",
    ])
    assert code == 0
    return str(out)


def test_cli_writes_shards_and_index(pretokenized: str) -> None:
    index = read_index(pretokenized)
    assert index is not None
    assert [s["path"] for s in index["shards"]] == [f"shard-{i:05d}.tar" for i in range(4)]
    assert [s["count"] for s in index["shards"]] == [1000] * 4
    assert index["num_records"] == 4000 and index["dtype"] == "<u2"
    assert index["tokenizer"]["pad_id"] == 0 and index["tokenizer"]["max_length"] == 128
    assert sum(index["length_histogram"]["anchor"]) == 4000
    assert all(s["max_length"]["positive"] <= 128 for s in index["shards"])
    with tarfile.open(Path(pretokenized) / "shard-00000.tar") as tar:
        names = tar.getnames()[:2]
        first = tar.extractfile(names[0])
        assert first is not None
        ids = np.load(io.BytesIO(first.read()), allow_pickle=False)
    assert names == ["000000000.anchor.npy", "000000000.positive.npy"]
    assert ids.dtype == np.uint16 and ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP]


def test_refuses_a_directory_that_already_holds_shards(pretokenized: str, sample_files: list[str],
                                                       tokenizer_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["pretokenize", sample_files[0], "--tokenizer", tokenizer_file, "--max-length", "8",
                     "--out", pretokenized, "--no-progress"])
    # The CLI's one rule: 1 for a data or I/O error (here: the output is taken), 2 for usage.
    assert code == 1
    assert "torchseq pretokenize: " in capsys.readouterr().err


def on_the_fly(sample_files: list[str], tokenizer_file: str, shuffle: bool) -> ts.Pipeline:
    pipe = ts.read_jsonl(sample_files)
    if shuffle:
        pipe = pipe.shuffle(buffer_size=500, seed=3)
    return pipe.tokenize(tokenizer_file, max_length=128).bucket(64).collate(pad_to_multiple_of=8)


def from_shards(directory: str, shuffle: bool) -> ts.Pipeline:
    pipe = ts.read_webdataset(directory)
    if shuffle:
        pipe = pipe.shuffle(buffer_size=500, seed=3)
    return pipe.bucket(64).collate(pad_to_multiple_of=8)


@pytest.mark.parametrize(("num_workers", "shuffle"), [(0, False), (2, True)])
def test_pretokenized_and_on_the_fly_batches_are_identical(
    pretokenized: str, sample_files: list[str], tokenizer_file: str, num_workers: int, shuffle: bool
) -> None:
    def run(pipe: ts.Pipeline) -> list[Any]:
        batches = DataLoader(pipe, batch_size=None, num_workers=num_workers)
        return [fingerprint({k: b[k] for k in ("anchor", "positive")}) for b in batches]

    expected = run(on_the_fly(sample_files, tokenizer_file, shuffle))
    got = run(from_shards(pretokenized, shuffle))
    assert len(got) == len(expected) >= 62
    assert got == expected


def test_pretokenized_pipeline_resumes_exactly(pretokenized: str) -> None:
    check_resume(lambda: from_shards(pretokenized, shuffle=True), num_workers=0, cuts=("1", "mid"))


def test_pad_id_comes_from_the_index(pretokenized: str, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in Path(pretokenized).iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    index = json.loads((copy / INDEX_NAME).read_text())
    index["tokenizer"]["pad_id"] = 7
    (copy / INDEX_NAME).write_text(json.dumps(index))
    batch = next(iter(ts.read_webdataset(str(copy)).batch(64).collate()))
    ids, mask = batch["positive"]["input_ids"], batch["positive"]["attention_mask"]
    assert (ids[mask == 0] == 7).all() and (mask == 0).any()
    # Listing the shards instead of the directory finds the index beside them.
    listed = ts.read_webdataset(sorted(str(p) for p in copy.glob("*.tar"))).batch(64).collate()
    assert (next(iter(listed))["positive"]["input_ids"] == ids).all()


def test_negatives_and_extra_fields_round_trip(tmp_path: Path, tokenizer_file: str) -> None:
    from tests.conftest import write_jsonl

    rows = [{"query": f"question {i}", "pos": [f"answer {i} is here"], "neg": [f"wrong {i}", "also wrong"],
             "guid": f"g{i}"} for i in range(10)]
    source = write_jsonl(tmp_path / "neg.jsonl", rows)
    out = tmp_path / "out"
    pretokenize(source, tokenizer_file, 16, out, progress=False, shard_size=4)
    expected = list(ts.read_jsonl(source).tokenize(tokenizer_file, 16))
    got = list(ts.read_webdataset(str(out)))
    assert len(got) == 10 and [s["count"] for s in read_index(out)["shards"]] == [4, 4, 2]  # type: ignore[index]
    for want, have in zip(expected, got, strict=True):
        assert have["guid"] == want["guid"]
        assert have["tokens"]["anchor"].tolist() == want["tokens"]["anchor"]
        assert [n.tolist() for n in have["tokens"]["negatives"]] == want["tokens"]["negatives"]
    batch = next(iter(ts.read_webdataset(str(out)).batch(4).collate()))
    assert batch["negatives"]["input_ids"].shape[:2] == (4, 2)


def _tar(tmp_path: Path, samples: list[dict[str, Any]], **writer: Any) -> str:
    path = str(tmp_path / "t.tar")
    with webdataset.TarWriter(path, **writer) as sink:
        for sample in samples:
            sink.write(sample)
    return path


@pytest.mark.parametrize("mtime", [None, 0])  # None: TarWriter adds a pax header to every member
def test_fast_member_reader_equals_tarfile(tmp_path: Path, mtime: int | None) -> None:
    samples = [{"__key__": f"dir/{i:04d}", "anchor.npy": np.arange(i, dtype=np.uint16), "json": {"i": i}}
               for i in range(50)]
    path = _tar(tmp_path, samples, mtime=mtime)
    with open(path, "rb") as stream:
        plain = PlainTar(stream, os.path.getsize(path), path)
        fast = [(name, plain.payload(size)) for name, size, _ in plain.members()]
    with tarfile.open(path) as tar:
        slow = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]  # type: ignore[union-attr]
    assert fast == slow and len(fast) == 100


def test_truncated_shard_falls_back_and_names_the_place(tmp_path: Path) -> None:
    samples = [{"__key__": f"{i:04d}", "anchor.npy": np.arange(40, dtype=np.uint16),
                "positive.npy": np.arange(3, dtype=np.uint16)} for i in range(20)]
    path = Path(_tar(tmp_path, samples, mtime=0))
    # Each sample is 4 blocks (header + data, twice): cut inside sample 12's first payload.
    path.write_bytes(path.read_bytes()[: 12 * 2048 + 512 + 100])
    with pytest.raises(DataError, match=r"t\.tar::0012\..*corrupt or truncated tar.*12 sample"):
        list(ts.read_webdataset(str(path)))
    kept = list(ts.read_webdataset(str(path), on_error="skip"))
    assert [r["__key__"] for r in kept] == [f"{i:04d}" for i in range(12)]


def test_npy_bytes_is_what_np_save_writes() -> None:
    for n in (0, 1, 130):
        buffer = io.BytesIO()
        np.save(buffer, np.arange(n, dtype=np.uint16))
        assert npy_bytes(np.arange(n, dtype=np.uint16)) == buffer.getvalue()


@pytest.mark.parametrize("nonzero", [0, 100, 256, 257, 512])
def test_header_checksum_equals_the_plain_byte_sum(nonzero: int) -> None:
    from torchseq.sources.plaintar import _header_sum

    rng = np.random.default_rng(nonzero)
    for _ in range(200):
        header = np.zeros(512, dtype=np.uint8)
        where = rng.choice(512, size=nonzero, replace=False)
        header[where] = rng.integers(1, 256, size=nonzero)  # up to 512 x 255: past adler32's modulus
        raw = header.tobytes()
        assert _header_sum(raw) == 256 + sum(raw[:148]) + sum(raw[156:])


def test_npy_decoding_checks_every_member_against_its_cached_header() -> None:
    from torchseq.records import RecordFormatError
    from torchseq.sources.npy import decode_npy

    for array in (np.arange(7, dtype=np.uint16), np.arange(12, dtype="<i4").reshape(3, 4),
                  np.asfortranarray(np.arange(12, dtype="<i8").reshape(3, 4)), np.array(5, dtype=np.uint8)):
        data = io.BytesIO()
        np.save(data, array, allow_pickle=False)
        raw = data.getvalue()
        for _ in range(2):  # parsed, then from the cache
            got = decode_npy(raw)
            assert got.dtype == array.dtype and got.shape == array.shape and (got == array).all()
        # Same header (so a cache hit), wrong amount of data: still refused.
        with pytest.raises(RecordFormatError, match="header says"):
            decode_npy(raw[:-1])
        with pytest.raises(RecordFormatError, match="header says"):
            decode_npy(raw + b"\0")


# ------------------------------------------------------------------ failures leave nothing half-written
def _argv(source: str, tokenizer_file: str, out: Path, *extra: str) -> list[str]:
    return ["pretokenize", source, "--tokenizer", tokenizer_file, "--max-length", "16", "--out", str(out),
            "--shard-size", "10", "--no-progress", *extra]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _pairs_file(path: Path, count: int, bad_at_end: bool = False) -> str:
    from tests.conftest import pair

    text = "".join(json.dumps(pair(i)) + "\n" for i in range(count))
    path.write_text(text + ("{not json\n" if bad_at_end else ""))
    return str(path)


def test_a_failure_mid_way_leaves_nothing_and_a_rerun_works(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _pairs_file(tmp_path / "in.jsonl", 25, bad_at_end=True)  # 2 shards done, the 3rd begun
    out = tmp_path / "out"
    assert cli_main(_argv(source, tokenizer_file, out)) == 1
    assert f"{source}:26: invalid JSON" in capsys.readouterr().err
    assert not out.exists()  # made by the failed run, removed with its temporaries

    _pairs_file(tmp_path / "in.jsonl", 25)
    assert cli_main(_argv(source, tokenizer_file, out)) == 0
    assert sorted(_snapshot(out)) == ["index.json", "shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert sum(1 for _ in ts.read_webdataset(str(out))) == 25


def test_a_failure_in_a_directory_the_user_made_keeps_the_directory(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README").write_text("mine")
    source = _pairs_file(tmp_path / "in.jsonl", 25, bad_at_end=True)
    assert cli_main(_argv(source, tokenizer_file, out)) == 1
    assert _snapshot(out) == {"README": b"mine"}


def test_existing_output_needs_overwrite_which_replaces_it_whole(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli_main(_argv(_pairs_file(tmp_path / "a.jsonl", 25), tokenizer_file, out)) == 0
    first = _snapshot(out)
    assert len(first) == 4
    capsys.readouterr()

    smaller = _pairs_file(tmp_path / "b.jsonl", 7)
    assert cli_main(_argv(smaller, tokenizer_file, out)) == 1
    assert capsys.readouterr().err == (
        f"torchseq pretokenize: {out}: already holds pre-tokenized shards (index.json and 3 shard(s)); "
        "pass --overwrite (overwrite=True) to replace them, or choose another directory\n"
    )
    assert _snapshot(out) == first

    # A failing --overwrite run: the old output stays whole.
    broken = _pairs_file(tmp_path / "c.jsonl", 15, bad_at_end=True)
    assert cli_main(_argv(broken, tokenizer_file, out, "--overwrite")) == 1
    assert _snapshot(out) == first

    assert cli_main(_argv(smaller, tokenizer_file, out, "--overwrite")) == 0
    assert sorted(_snapshot(out)) == ["index.json", "shard-00000.tar"]  # the old 2nd and 3rd shard are gone
    assert [r["tokens"]["anchor"].tolist() for r in ts.read_webdataset(str(out))] == [
        r["tokens"]["anchor"] for r in ts.read_jsonl(smaller).tokenize(tokenizer_file, 16)]


def test_shards_without_an_index_are_an_interrupted_run(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    source = _pairs_file(tmp_path / "a.jsonl", 25)
    assert cli_main(_argv(source, tokenizer_file, out)) == 0
    (out / INDEX_NAME).unlink()  # as a run killed between its renames leaves it
    capsys.readouterr()
    assert cli_main(_argv(source, tokenizer_file, out)) == 1
    assert "holds 3 shard-*.tar file(s) but no index.json, the output of an interrupted run; pass --overwrite" in (
        capsys.readouterr().err)
    assert cli_main(_argv(source, tokenizer_file, out, "--overwrite")) == 0
    assert read_index(out)["num_records"] == 25  # type: ignore[index]


def test_temporaries_of_a_dead_run_are_removed_those_of_a_live_one_refused(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (out / f".shard-00000.tar.tmp-{dead.stdout.strip()}").write_bytes(b"half a shard")
    source = _pairs_file(tmp_path / "a.jsonl", 5)
    assert cli_main(_argv(source, tokenizer_file, out)) == 0
    assert sorted(_snapshot(out)) == ["index.json", "shard-00000.tar"]

    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            (out / f".shard-00000.tar.tmp-{live.pid}").write_bytes(b"being written")
            capsys.readouterr()
            assert cli_main(_argv(source, tokenizer_file, out, "--overwrite")) == 1
            temporary = out / f".shard-00000.tar.tmp-{live.pid}"
            assert capsys.readouterr().err == (
                f"torchseq pretokenize: {out}: another pretokenize (process {live.pid}) is writing here; "
                f"wait for it to finish or stop it, or choose another directory (if process {live.pid} is no "
                f"pretokenize, remove {temporary})\n"
            )
            assert (out / f".shard-00000.tar.tmp-{live.pid}").exists()
        finally:
            live.kill()


def test_an_index_json_that_is_not_ours_is_never_replaced(
    tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / INDEX_NAME).write_text('{"format": "something else"}')
    source = _pairs_file(tmp_path / "a.jsonl", 5)
    assert cli_main(_argv(source, tokenizer_file, out, "--overwrite")) == 1
    assert "not a torchseq pre-tokenized index" in capsys.readouterr().err
    assert _snapshot(out) == {INDEX_NAME: b'{"format": "something else"}'}


def test_out_that_is_a_file(tmp_path: Path, tokenizer_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = _pairs_file(tmp_path / "a.jsonl", 5)
    assert cli_main(_argv(source, tokenizer_file, Path(source))) == 1
    assert capsys.readouterr().err == (
        f"torchseq pretokenize: {source}: is a file; --out names a directory for the shards and index.json\n"
    )


def test_reader_options_on_the_command_line(tmp_path: Path, tokenizer_file: str) -> None:
    from tests.conftest import write_jsonl

    rows = [{"question": f"question {i}", "answer": f"answer {i}"} for i in range(5)]
    source = write_jsonl(tmp_path / "qa.data", rows)
    out = tmp_path / "out"
    assert cli_main(_argv(source, tokenizer_file, out, "--format", "jsonl",
                          "--fields", "anchor=question,positive=answer")) == 0
    expected = ts.read_jsonl(source, fields={"anchor": "question", "positive": "answer"}).tokenize(tokenizer_file, 16)
    assert [r["tokens"]["positive"].tolist() for r in ts.read_webdataset(str(out))] == [
        r["tokens"]["positive"] for r in expected]

"""The ``torchseq`` command line: --help everywhere, inspect, convert."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import torchseq as ts
from tests.conftest import pair, write_jsonl
from tests.support.badinput import write_tar
from torchseq.cli import COMMANDS, main
from torchseq.stages.tokenize import encode_reference


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: torchseq {command}")
    assert len(out.splitlines()) > 5


def test_the_module_entry_point_runs(subprocess_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "torchseq", "--help"], capture_output=True,
                            text=True, env=subprocess_env, timeout=120)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------ inspect
def test_inspect_reports_lengths_and_padding_of_the_sample(
    sample_files: list[str], tokenizer_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["inspect", *sample_files, "--tokenizer", tokenizer_file, "--json",
                            "--batch-size", "32", "--max-length", "64", "--no-progress"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["records"] == 4000 and report["num_shards"] == 4
    assert [s["records"] for s in report["shards"]] == [1000] * 4
    assert report["formats"] == {"list": 4000} and report["skipped"] == {}

    records = list(ts.read_jsonl(sample_files))
    for column in ("anchor", "positive"):
        lengths = np.array([len(ids) for ids in encode_reference(
            tokenizer_file, [r[column] for r in records], 1 << 30)])
        row = report["lengths"][column]
        assert row["count"] == 4000 and row["max"] == lengths.max()
        assert row["p50"] == np.percentile(lengths, 50) and row["p99"] == np.percentile(lengths, 99)
        assert row["over_max_length"] == pytest.approx((lengths > 64).mean())

    # Fixed batches of 32 in file order, worked out here independently.
    cut = {c: [min(len(ids), 64) for ids in encode_reference(tokenizer_file, [r[c] for r in records], 1 << 30)]
           for c in ("anchor", "positive")}
    real = padded = 0
    for start in range(0, 4000, 32):
        for column in ("anchor", "positive"):
            chunk = cut[column][start:start + 32]
            real += sum(chunk)
            padded += len(chunk) * max(chunk)
    strategies = {p["strategy"]: p for p in report["padding"]}
    assert strategies["batch(32)"]["efficiency"] == pytest.approx(real / padded)
    assert strategies["batch(32)"]["batches"] == 125
    assert strategies["bucket(32)"]["efficiency"] > strategies["batch(32)"]["efficiency"]
    budget = strategies["batch_by_tokens(2048)"]
    assert budget["batches"] * budget["mean_batch_size"] == pytest.approx(4000)


def test_inspect_text_output_and_plot(sample_files: list[str], tokenizer_file: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "lengths.png"
    code, out, err = run_cli(["inspect", sample_files[0], "--tokenizer", tokenizer_file,
                              "--plot", str(plot), "--no-progress"], capsys)
    assert code == 0
    assert "records:  1,000 valid, 0 skipped" in out
    assert "lengths in tokens (tokenizer.json, before truncation)" in out
    assert "bucket(64)" in out and "batch_by_tokens(8192)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(plot) in err


def test_inspect_counts_bad_input_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_jsonl(tmp_path / "a.jsonl.gz", [pair(i) for i in range(20)])
    mixed = tmp_path / "b.jsonl"
    mixed.write_text("\n".join([
        json.dumps({"query": "q", "pos": ["p1", "p2"], "neg": ["n"]}),
        "{not json",
        json.dumps({"set": ["x", "y", "z"]}),
        json.dumps(["", "empty anchor"]),
    ]) + "\n")
    code, out, err = run_cli(["inspect", good, str(mixed), str(tmp_path / "gone.jsonl"), "--json",
                              "--no-progress"], capsys)
    # The whole report, then exit 1 for the shard that was not found (bad lines alone would be 0).
    assert code == 1
    assert err == f"torchseq inspect: 1 shard(s) not found: {tmp_path / 'gone.jsonl'}; check the paths\n"
    report = json.loads(out)
    assert report["records"] == 22 and report["unit"] == "characters"
    assert report["formats"] == {"list": 20, "query/pos/neg": 1, "set": 1}
    assert report["skipped"] == {"invalid json": 1, "empty text": 1, "missing shard": 1}
    places = [e[0] for e in report["errors"]]
    assert places == [f"{mixed}:2", f"{mixed}:4", str(tmp_path / "gone.jsonl")]
    assert report["fields"]["negatives"] == 1 and report["fields"]["positives"] == 1


def test_inspect_webdataset_and_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.badinput import tar_sample

    shards = [write_tar(tmp_path / f"s-{k}.tar", [tar_sample(i) for i in range(k * 50, k * 50 + 50)])
              for k in range(3)]
    code, out, _ = run_cli(["inspect", str(tmp_path / "s-*.tar"), "--limit", "70", "--json",
                            "--no-progress"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["reader"] == "webdataset" and report["num_shards"] == 3
    assert report["records"] == 70 and report["limited"] is True
    assert report["formats"] == {"json (anchor/positive)": 70}
    assert [s["path"] for s in report["shards"]] == shards[:2]


def test_inspect_reports_errors_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["inspect", str(tmp_path / "nothing-*.jsonl")], capsys)
    assert code == 1 and out == ""
    assert err.startswith("torchseq inspect: ") and "glob matched no shards" in err


# ------------------------------------------------------------------ convert
def _pairs(pipe: ts.Pipeline) -> list[tuple[str, str]]:
    return [(r["anchor"], r["positive"]) for r in pipe]


def test_convert_jsonl_to_webdataset_and_back(sample_files: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    original = _pairs(ts.read_jsonl(sample_files))
    pattern = str(tmp_path / "wds" / "train-%05d.tar")
    code, out, _ = run_cli(["convert", *sample_files, pattern, "--no-progress"], capsys)
    assert code == 0 and "wrote 4,000 records to 4 shard(s)" in out
    tars = [pattern % k for k in range(4)]
    with tarfile.open(tars[0]) as tar:  # real TarWriter output: KEY.json members
        names = tar.getnames()
    assert len(names) == 1000 and all(n.endswith(".json") for n in names)
    assert _pairs(ts.read_webdataset(tars)) == original

    back = str(tmp_path / "back.jsonl.gz")
    code, out, _ = run_cli(["convert", *tars, back, "--no-progress"], capsys)
    assert code == 0 and "wrote 4,000 records to 1 shard(s)" in out
    assert _pairs(ts.read_jsonl(back)) == original
    first = json.loads(__import__("gzip").open(back).readline())
    assert set(first) == {"anchor", "positive"}  # normalised, no tar key


def test_convert_reshards_and_keeps_extra_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"question": f"q {i}", "answer": f"a {i}", "guid": i} for i in range(25)]
    source = write_jsonl(tmp_path / "qa.jsonl", rows)
    pattern = str(tmp_path / "out-%02d.tar.gz")
    code, _, _ = run_cli(["convert", source, pattern, "--records-per-shard", "10",
                          "--fields", "anchor=question,positive=answer", "--no-progress"], capsys)
    assert code == 0
    outputs = [pattern % k for k in range(3)]
    records = list(ts.read_webdataset(outputs))
    assert [r["guid"] for r in records] == list(range(25))
    assert records[3]["anchor"] == "q 3" and records[3]["positive"] == "a 3"
    assert [sum(1 for _ in ts.read_webdataset(p)) for p in outputs] == [10, 10, 5]


def test_convert_refuses_to_overwrite_and_skips_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(pair(0)) + "\n{oops\n" + json.dumps(pair(1)) + "\n")
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["convert", str(source), str(out), "--no-progress"], capsys)
    assert code == 1 and f"{source}:2: invalid JSON" in err
    assert not out.exists() and not Path(str(out) + ".tmp").exists()

    code, text, _ = run_cli(["convert", str(source), str(out), "--on-error", "skip", "--no-progress"], capsys)
    assert code == 0 and "skipped: 1 (invalid json 1)" in text
    assert [r["anchor"] for r in ts.read_jsonl(str(out))] == [pair(0)[0], pair(1)[0]]

    code, _, err = run_cli(["convert", str(source), str(out), "--on-error", "skip", "--no-progress"], capsys)
    assert code == 1 and "exists; pass --overwrite" in err
    code, _, _ = run_cli(["convert", str(source), str(out), "--on-error", "skip", "--overwrite",
                          "--no-progress"], capsys)
    assert code == 0


def test_convert_keeps_pretokenized_ids(tmp_path: Path) -> None:
    from torchseq.tools.convert import convert

    ids = np.array([2, 17, 3], dtype=np.uint16)
    sample: dict[str, Any] = {"__key__": "k0", "anchor.npy": _npy(ids), "positive.npy": _npy(ids[::-1].copy())}
    source = write_tar(tmp_path / "tok.tar", [sample])
    report = convert(source, str(tmp_path / "copy.tar"))
    assert report.records == 1
    (record,) = list(ts.read_webdataset(str(tmp_path / "copy.tar")))
    assert record["tokens"]["anchor"].tolist() == [2, 17, 3]
    assert record["tokens"]["positive"].dtype == np.uint16


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()

"""Every command's failure modes as a user meets them: the documented exit code, a message on
stderr that names the path and says what to do, and never a traceback.

Exit codes (docs/cli.md): 0 success; 1 the data or the file system stopped the
command; 2 the command line is wrong on its face (checked before any file is
touched); 130 interrupted.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.metadata
import json
import lzma
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

import torchseq as ts
from tests.conftest import pair, write_jsonl
from torchseq.cli import main

#: Every output suffix convert writes: exactly the ones torchseq's readers read back.
JSONL_SUFFIXES = [".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.bz2", ".jsonl.xz"]
TAR_SUFFIXES = [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz"]
MAGIC = {"gz": b"\x1f\x8b", "tgz": b"\x1f\x8b", "zst": b"\x28\xb5\x2f\xfd", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` as the entry point runs it: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse and usage errors exit 2 through parser.error
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m torchseq ARGV`` in a child process."""
    done = subprocess.run([sys.executable, "-m", "torchseq", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def usage_error(err: str, command: str) -> str:
    """The message of an exit-2 error: argparse's usage line, then ``torchseq COMMAND: error: ...``."""
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: torchseq {command}"), err
    assert lines[-1].startswith(f"torchseq {command}: error: "), err
    return lines[-1].removeprefix(f"torchseq {command}: error: ")


def data_error(err: str, command: str) -> str:
    """The message of an exit-1 error: one line ``torchseq COMMAND: ...``."""
    assert err.startswith(f"torchseq {command}: ") and err.count("\n") == 1, err
    return err.strip().removeprefix(f"torchseq {command}: ")


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def source(tmp_path: Path) -> str:
    """30 records with negatives and an extra field, in a subdirectory of their own."""
    (tmp_path / "in").mkdir()
    rows = [{"anchor": a, "positive": p, "negatives": [f"wrong {i}"], "guid": i}
            for i, (a, p) in enumerate(pair(i) for i in range(30))]
    return write_jsonl(tmp_path / "in" / "source.jsonl", rows)


# ------------------------------------------------------------------ --version
def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out == f"torchseq {importlib.metadata.version('torchseq')}\n"


def test_version_from_the_entry_point(subprocess_env: dict[str, str]) -> None:
    done = run(["--version"], subprocess_env)
    assert done.returncode == 0 and done.stdout == f"torchseq {ts.__version__}\n"


def test_the_exit_code_transcript_in_the_docs(subprocess_env: dict[str, str]) -> None:
    """docs/cli.md's "Exit codes" example, run as one shell session from the repository root."""
    repo = Path(__file__).resolve().parents[2]
    section = (repo / "docs" / "cli.md").read_text().split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    transcript = section.split("\n```\n", 1)[1].split("\n```\n", 1)[0].splitlines()
    commands = [line.removeprefix("$ ") for line in transcript if line.startswith("$ ")]
    expected = [line for line in transcript if not line.startswith("$ ")]
    assert len(commands) == 8 and all(c.startswith(("python -m torchseq ", "echo")) for c in commands)
    script = "\n".join(c.replace("python ", f"{sys.executable} ", 1) for c in commands)
    done = subprocess.run(["bash", "-c", script], cwd=repo, env={**subprocess_env, "COLUMNS": "80"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert [line.rstrip() for line in done.stdout.splitlines()] == expected


# ------------------------------------------------------------------ convert: output names
@pytest.mark.parametrize("name", ["out.parquet", "out.txt", "out.json", "out", "out.gz", "out.bz2",
                                  "out.jsonl.lz4", "out.tar.lz4", "out.zip", "out.jsonl.gz.tmp"])
def test_convert_refuses_an_output_suffix_it_cannot_write(
    name: str, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = listing(tmp_path)
    out = tmp_path / "o" / name
    code, stdout, err = cli(["convert", source, str(out), "--no-progress"], capsys)
    assert code == 2 and stdout == ""
    message = usage_error(err, "convert")
    assert message.startswith(f"{out}: ") and "cannot write" in message
    assert ".jsonl.gz" in message and ".tar.zst" in message  # lists what it can write
    assert listing(tmp_path) == before  # nothing written, no directory made


@pytest.mark.parametrize("suffix", JSONL_SUFFIXES + TAR_SUFFIXES)
def test_convert_round_trips_every_suffix_it_writes(
    suffix: str, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"out{suffix}"
    code, stdout, err = cli(["convert", source, str(out), "--no-progress"], capsys)
    assert (code, err) == (0, "") and "wrote 30 records to 1 shard(s)" in stdout
    compression = suffix.rpartition(".")[2]
    head = out.read_bytes()[:6]
    if compression in MAGIC:  # really compressed as the name says
        assert head.startswith(MAGIC[compression])
    else:
        assert not any(head.startswith(magic) for magic in MAGIC.values())
    tar = suffix in TAR_SUFFIXES
    back = list(ts.read_webdataset(str(out)) if tar else ts.read_jsonl(str(out)))
    expected = list(ts.read_jsonl(source))
    assert [{k: v for k, v in r.items() if k != "__key__"} for r in back] == expected
    if suffix == ".tar":
        with tarfile.open(out) as archive:
            assert archive.getnames()[0].endswith(".json")


def test_convert_compresses_as_the_suffix_says(source: str, tmp_path: Path) -> None:
    from torchseq.tools.convert import convert

    def zstd_open(path: Path, mode: str) -> Any:
        return zstandard.ZstdDecompressor().stream_reader(open(path, mode))  # noqa: SIM115

    texts = set()
    for suffix, open_ in {".jsonl.gz": gzip.open, ".jsonl.bz2": bz2.open, ".jsonl.xz": lzma.open,
                          ".jsonl.zst": zstd_open}.items():
        convert(source, str(tmp_path / f"c{suffix}"))
        with open_(tmp_path / f"c{suffix}", "rb") as f:  # the standard tools read it
            texts.add(f.read())
    (text,) = texts
    assert json.loads(text.splitlines()[0]) == {
        "anchor": pair(0)[0], "positive": pair(0)[1], "negatives": ["wrong 0"], "guid": 0}


@pytest.mark.parametrize("name", ["outdir/", "outdir/train-00000.jsonl/"])
def test_convert_refuses_a_directory_name_as_out(
    name: str, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = listing(tmp_path)
    out = f"{tmp_path}/{name}"  # as typed: a Path would drop the trailing slash
    code, _, err = cli(["convert", source, out, "--no-progress"], capsys)
    assert code == 2
    assert usage_error(err, "convert") == (
        f"{out}: names a directory; OUT is an output file, or a pattern such as {out}train-%05d.tar"
    )
    assert listing(tmp_path) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_convert_refuses_an_existing_directory_as_out(
    overwrite: list[str], source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken.jsonl"
    (out / "keep").mkdir(parents=True)
    code, _, err = cli(["convert", source, str(out), "--no-progress", *overwrite], capsys)
    assert code == 2
    assert usage_error(err, "convert") == (
        f"{out}: names a directory; OUT is an output file, or a pattern such as {out}/train-%05d.tar"
    )
    assert listing(tmp_path / "taken.jsonl") == ["keep"]


def test_convert_refuses_a_pattern_whose_shard_name_is_a_directory(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "o" / "x-00000.tar").mkdir(parents=True)
    code, _, err = cli(["convert", source, str(tmp_path / "o" / "x-%05d.tar"), "--no-progress"], capsys)
    assert code == 1
    assert data_error(err, "convert") == (
        f"{tmp_path}/o/x-00000.tar: an output shard's name is taken by a directory; remove it, or choose another OUT")
    assert listing(tmp_path / "o") == ["x-00000.tar"]


def test_convert_output_that_cannot_be_created(source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    out = blocker / "out.jsonl"
    code, _, err = cli(["convert", source, str(out), "--no-progress"], capsys)
    assert code == 1
    message = data_error(err, "convert")
    assert message.startswith(f"{out}: cannot write the output") and ".tmp" not in message


def test_convert_errors_from_the_entry_point(source: str, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    done = run(["convert", source, str(tmp_path / "out.parquet"), "--no-progress"], subprocess_env)
    assert done.returncode == 2 and "cannot write" in done.stderr
    done = run(["convert", source, str(tmp_path / "outdir") + "/", "--no-progress"], subprocess_env)
    assert done.returncode == 2 and "names a directory" in done.stderr
    assert not (tmp_path / "outdir").exists()


def test_a_failed_convert_leaves_no_temporary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps(pair(0)) + "\n{oops\n")
    code, _, err = cli(["convert", str(bad), str(tmp_path / "out" / "x-%02d.tar.zst"), "--no-progress"], capsys)
    assert code == 1 and f"{bad}:2: invalid JSON" in err
    assert listing(tmp_path / "out") == []


def test_convert_removes_what_a_killed_convert_left(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    out = tmp_path / "o" / "out[1].jsonl"  # glob characters in the name are taken literally
    out.parent.mkdir()
    (out.parent / f".out[1].jsonl.tmp-{dead}").write_bytes(b"half a shard")
    (out.parent / f".out1.jsonl.tmp-{dead}").write_bytes(b"another output's")
    code, _, err = cli(["convert", source, str(out), "--no-progress"], capsys)
    assert (code, err) == (0, "")
    assert listing(out.parent) == [f".out1.jsonl.tmp-{dead}", "out[1].jsonl"]


# ------------------------------------------------------------------ inspect: nothing read
def _unknown(tmp_path: Path) -> list[str]:
    path = tmp_path / "unknown.jsonl"
    path.write_text('{"x": 1}\n{"y": 2}\n')
    return [str(path)]


def _empty(tmp_path: Path) -> list[str]:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    return [str(tmp_path / "empty.jsonl")]


def _missing(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "missing.jsonl")]


def _missing_among_good(tmp_path: Path) -> list[str]:
    return [write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(5)]), str(tmp_path / "missing.jsonl")]


@pytest.mark.parametrize(("corpus", "valid", "says"), [
    (_missing, 0, "1 shard(s) not found: {tmp}/missing.jsonl; check the paths"),
    (_missing_among_good, 5, "1 shard(s) not found: {tmp}/missing.jsonl; check the paths"),
    (_unknown, 0, "no valid records in 1 shard(s) (2 skipped: unknown format 2); the report above says why"),
    (_empty, 0, "no valid records in 1 shard(s) (0 skipped); the report above says why"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_exits_1_when_it_read_nothing_or_a_shard_is_missing(
    corpus: Any, valid: int, says: str, as_json: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(["inspect", *corpus(tmp_path), "--no-progress", *(["--json"] if as_json else [])], capsys)
    assert code == 1
    assert data_error(err, "inspect") == says.format(tmp=tmp_path)
    if as_json:  # the report is still printed, whole
        assert json.loads(out)["records"] == valid
    else:
        assert f"records:  {valid:,} valid" in out


def test_inspect_bad_lines_among_good_ones_still_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(pair(0)) + "\n{oops\n")
    code, out, err = cli(["inspect", str(path), "--no-progress"], capsys)
    assert (code, err) == (0, "")
    assert "records:  1 valid, 1 skipped" in out


def test_inspect_plot_into_a_missing_directory_fails_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "nodir" / "lengths.png"
    code, out, err = cli(["inspect", str(tmp_path / "never-read.jsonl"), "--plot", str(plot), "--no-progress"],
                         capsys)
    assert (code, out) == (1, "")
    assert data_error(err, "inspect") == (
        f"--plot {plot}: directory {plot.parent} not found; create it, or save the plot elsewhere")


def test_inspect_plot_with_an_unknown_suffix_from_the_entry_point(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(5)])
    done = run(["inspect", good, "--plot", str(tmp_path / "lengths.bmp"), "--no-progress"], subprocess_env)
    assert done.returncode == 2 and done.stdout == "" and "matplotlib writes no .bmp images" in done.stderr
    done = run(["inspect", good, "--plot", str(tmp_path / "lengths.svg"), "--no-progress"], subprocess_env)
    assert done.returncode == 0 and (tmp_path / "lengths.svg").read_bytes().startswith(b"<?xml")


def test_inspect_missing_path_from_the_entry_point(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    done = run(["inspect", str(tmp_path / "missing.jsonl"), "--no-progress"], subprocess_env)
    assert done.returncode == 1
    assert done.stderr == f"torchseq inspect: 1 shard(s) not found: {tmp_path}/missing.jsonl; check the paths\n"


# ------------------------------------------------------------------ index
def test_index_on_a_missing_file(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    done = run(["index", str(tmp_path / "missing.jsonl")], subprocess_env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"torchseq index: {tmp_path}/missing.jsonl: shard not found; check the path and the spec\n"


# ------------------------------------------------------------------ arguments out of range
@pytest.mark.parametrize(("argv", "says"), [
    (["demo", "--epochs", "0"], "argument --epochs: must be an integer >= 1, got '0'"),
    (["demo", "--num-workers", "-1"], "argument --num-workers: must be an integer >= 0, got '-1'"),
    (["demo", "--batch-size", "x"], "argument --batch-size: must be an integer >= 1, got 'x'"),
    (["inspect", "a.jsonl", "--limit", "0"], "argument --limit: must be an integer >= 1, got '0'"),
    (["inspect", "a.jsonl", "--max-tokens", "0"], "argument --max-tokens: must be an integer >= 1, got '0'"),
    (["inspect", "a.jsonl", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["inspect", "a.jsonl", "--plot", "lengths"],
     "--plot lengths: name the image file with its format's suffix, e.g. lengths.png"),
    (["inspect", "a.jsonl", "--plot", "lengths.bmp"],
     "--plot lengths.bmp: matplotlib writes no .bmp images; use one of .avif, .eps, .gif, .jpeg, .jpg, .pdf, "
     ".pgf, .png, .ps, .raw, .rgba, .svg, .svgz, .tif, .tiff, .webp"),
    (["convert", "a.jsonl", "b.tar", "--records-per-shard", "0"],
     "argument --records-per-shard: must be an integer >= 1, got '0'"),
    (["convert", "a.jsonl", "b-%d-%d.tar"],
     "b-%d-%d.tar: output pattern needs one integer field such as %05d (not enough arguments for format string)"),
    (["index", "a.jsonl", "--world-size", "2"], "--world-size and --batch-size go together: give both, or neither"),
    (["index", "a.jsonl", "--world-size", "0", "--batch-size", "2"],
     "argument --world-size: must be an integer >= 1, got '0'"),
    (["pretokenize", "a.jsonl", "--tokenizer", "t.json", "--max-length", "0", "--out", "o"],
     "argument --max-length: must be an integer >= 1, got '0'"),
    (["pretokenize", "a.jsonl", "--tokenizer", "t.json", "--max-length", "8", "--out", "o", "--shard-size", "0"],
     "argument --shard-size: must be an integer >= 1, got '0'"),
])
def test_arguments_out_of_range_are_usage_errors(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert usage_error(err, argv[0]) == says
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["inspect", "pretokenize"])
def test_a_directory_given_as_the_tokenizer(command: str, source: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, source, "--tokenizer", str(tmp_path), "--no-progress"]
    if command == "pretokenize":
        argv += ["--max-length", "8", "--out", str(tmp_path / "out")]
    code, _, err = cli(argv, capsys)
    assert code == 1
    assert data_error(err, command) == (
        f"{tmp_path}: is a directory; give the tokenizer.json file, e.g. {tmp_path}/tokenizer.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["inspect", "pretokenize"])
def test_a_file_that_is_not_a_tokenizer(command: str, source: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, source, "--tokenizer", source, "--no-progress"]
    if command == "pretokenize":
        argv += ["--max-length", "8", "--out", str(tmp_path / "out")]
    code, _, err = cli(argv, capsys)
    assert code == 1
    assert data_error(err, command).startswith(f"{source}: not a tokenizer.json file (")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ interrupted
def _fifo_run(tmp_path: Path, tokenizer_file: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path, Any]:
    """A ``pretokenize`` child reading a FIFO that is never closed: it writes some shards, then waits."""
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-m", "torchseq", "pretokenize", str(fifo), "--tokenizer", tokenizer_file,
         "--max-length", "16", "--out", str(out), "--shard-size", "100", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while True:  # open without blocking: a child that fails before reading must not hang the test
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "pretokenize never opened its input"
            time.sleep(0.05)
    os.set_blocking(fd, True)
    writer = os.fdopen(fd, "w")  # held open until the child is stopped: no end of input
    writer.write("".join(json.dumps(pair(i)) + "\n" for i in range(1000)))
    writer.flush()
    while not (out.exists() and len(os.listdir(out)) >= 3):  # some shards done, the next one begun
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "pretokenize wrote nothing"
        time.sleep(0.05)
    return child, out, writer


def test_an_interrupted_pretokenize_exits_130_and_cleans_up(
    tmp_path: Path, tokenizer_file: str, subprocess_env: dict[str, str]
) -> None:
    child, out, writer = _fifo_run(tmp_path, tokenizer_file, subprocess_env)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    writer.close()
    assert "Traceback" not in stderr
    assert (child.returncode, stdout, stderr) == (130, "", "torchseq pretokenize: interrupted\n")
    assert not out.exists()  # made by the run, removed with its temporaries


def test_a_killed_pretokenize_leaves_nothing_that_looks_complete_and_a_rerun_works(
    tmp_path: Path, tokenizer_file: str, subprocess_env: dict[str, str]
) -> None:
    child, out, writer = _fifo_run(tmp_path, tokenizer_file, subprocess_env)
    child.kill()
    child.communicate(timeout=120)
    writer.close()
    left = os.listdir(out)
    assert left and all(name.startswith(".") and ".tmp-" in name for name in left), left

    good = write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(250)])
    done = run(["pretokenize", good, "--tokenizer", tokenizer_file, "--max-length", "16", "--out", str(out),
                "--shard-size", "100", "--no-progress"], subprocess_env)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == ["index.json", "shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert sum(1 for _ in ts.read_webdataset(str(out))) == 250

"""Misuse that used to fail cryptically or silently, and defaults that must match the docs.

* the reader's tolerance for bad input is on by default (``max_errors=1000``,
  ``max_error_rate=0.01``): a mostly broken run stops;
* an operating-system read error is named as one, not as a corrupt shard;
* a rank whose inputs were all skipped is told so, not asked about a filter;
* a DataLoader that batches a batching pipeline again is refused with the fix;
* a shuffled pipeline iterated again at the same epoch warns, once, about ``set_epoch``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from tests.conftest import anchor_index, pair, write_jsonl
from torchseq.sources.options import ReaderOptions


def original_message(exc: BaseException, num_workers: int) -> str:
    """The message raised in the worker; DataLoader wraps it in a traceback when it crosses processes."""
    if num_workers == 0:
        return str(exc)
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    lines = [line for line in str(exc).splitlines() if line.startswith(prefix)]
    assert lines, f"no original message in: {exc}"
    return lines[-1][len(prefix):]


def drain(loader: Any) -> list[Any]:
    """Every item of one pass; a failed pass drops its iterator at once (workers stop without waiting)."""
    iterator = iter(loader)
    try:
        return list(iterator)
    except Exception as exc:
        exc.__traceback__ = None
        del iterator
        raise


def lines_file(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


# --------------------------------------------------------------- tolerance defaults
def test_reader_defaults_are_the_documented_limits() -> None:
    options = ReaderOptions()
    assert (options.max_errors, options.max_error_rate) == (1000, 0.01)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mostly_garbage_run_stops_by_default(tmp_path: Path, num_workers: int) -> None:
    # 5,000 garbage lines and 1 good one (two shards: one per worker).
    good = json.dumps(pair(0)).encode()
    paths = [lines_file(tmp_path / f"garbage-{k}.jsonl", [b"{oops"] * 2500 + [good]) for k in range(2)]
    pipe = ts.read_jsonl(paths, on_error="skip")
    with pytest.raises(ts.TooManyErrorsError) as info:
        drain(DataLoader(pipe, batch_size=None, num_workers=num_workers))
    message = original_message(info.value, num_workers)
    assert message.startswith(f"{paths[0]}:1000: too much bad input: 1000 skipped of 1000 read in this worker "
                              "(100.0% of inputs, over max_error_rate=0.01); most common: invalid json (1000)")


def test_the_default_max_errors_stops_a_large_run_at_the_rate_limit(tmp_path: Path) -> None:
    # Exactly 1 % bad: never over max_error_rate, so max_errors=1000 is what stops it.
    lines = [b"{oops" if i % 100 == 99 else json.dumps(pair(i)).encode() for i in range(101_000)]
    path = lines_file(tmp_path / "one-percent.jsonl", lines)
    with pytest.raises(ts.TooManyErrorsError) as info:
        list(ts.read_jsonl(path, on_error="skip"))
    assert str(info.value).startswith(f"{path}:100100: too much bad input: 1001 skipped of 100100 read in "
                                      "this worker (more than max_errors=1000)")


def test_the_default_error_rate_stops_a_run_with_two_percent_bad_input(tmp_path: Path) -> None:
    # 60 bad lines of 3,000: well under max_errors, over 1 % once 1,000 inputs were seen.
    lines = [b"[1, 2]" if i % 50 == 7 else json.dumps(pair(i)).encode() for i in range(3000)]
    pipe = ts.read_jsonl(lines_file(tmp_path / "two-percent.jsonl", lines), on_error="skip")
    with pytest.raises(ts.TooManyErrorsError, match=r"over max_error_rate=0\.01"):
        list(pipe)


def test_the_defaults_let_a_small_run_with_a_few_bad_lines_finish(tmp_path: Path) -> None:
    # 3 bad lines of 10: a rate is not judged on so few inputs (max_errors still applies).
    lines = [b"{oops" if i in (2, 5, 8) else json.dumps(pair(i)).encode() for i in range(10)]
    pipe = ts.read_jsonl(lines_file(tmp_path / "small.jsonl", lines), on_error="skip")
    assert [anchor_index(r["anchor"]) for r in pipe] == [0, 1, 3, 4, 6, 7, 9]
    assert pipe.stats().skipped == {"invalid json": 3}


def test_the_limits_can_be_turned_off(tmp_path: Path) -> None:
    path = lines_file(tmp_path / "garbage.jsonl", [b"{oops"] * 5000 + [json.dumps(pair(0)).encode()])
    pipe = ts.read_jsonl(path, on_error="skip", max_errors=None, max_error_rate=None)
    assert len(list(pipe)) == 1
    assert pipe.stats().skipped == {"invalid json": 5000}


# --------------------------------------------------------------- the real cause
needs_proc_mem = pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc/self/mem")


@needs_proc_mem
def test_an_operating_system_read_error_is_named_as_one(tmp_path: Path) -> None:
    # Reading /proc/self/mem at offset 0 fails in the kernel with EIO: a real I/O error.
    good = write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(5)])
    with pytest.raises(ts.ShardReadError) as info:
        list(ts.read_jsonl(["/proc/self/mem", good]))
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert message.startswith("/proc/self/mem:1: read error (EIO: Input/output error)")
    assert "corrupt" not in message
    pipe = ts.read_jsonl(["/proc/self/mem", good], on_error="skip")
    assert len(list(pipe)) == 5
    assert pipe.stats().skipped == {"read error": 1}


def guard_pipe(tmp_path: Path, rank: int, rows: list[bytes], **options: Any) -> ts.Pipeline:
    good = write_jsonl(tmp_path / "good.jsonl", [pair(i) for i in range(40)])
    other = lines_file(tmp_path / "other.jsonl", rows)
    return ts.read_jsonl([good, other], on_error="skip", **options).with_topology(rank, 2)


def test_a_rank_whose_inputs_were_all_skipped_is_told_so(tmp_path: Path) -> None:
    pipe = guard_pipe(tmp_path, 1, [b"{oops"] * 40).batch(4)
    with pytest.raises(ts.DataError) as info:
        list(pipe)
    message = str(info.value)
    assert message.startswith("rank 1 worker 0 epoch 0: the pipeline yielded none of the 10 batches planned")
    assert "all 40 of this worker's inputs were skipped by the error policy (invalid json (40))" in message
    assert "filter" not in message


def test_a_rank_whose_records_a_filter_removed_is_told_so(tmp_path: Path) -> None:
    rows = [json.dumps(pair(i)).encode() for i in range(100, 140)]
    pipe = guard_pipe(tmp_path, 1, rows).filter(lambda r: anchor_index(r["anchor"]) < 100).batch(4)
    with pytest.raises(ts.DataError, match=r"this worker read 40 records and a stage \(a filter\?\) removed all"):
        list(pipe)


# --------------------------------------------------------------- DataLoader re-batching
def collated(paths: list[str], tokenizer_file: str) -> ts.Pipeline:
    return ts.read_jsonl(paths).tokenize(tokenizer_file, max_length=16).batch(8).collate()


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size", [1, 64])
def test_a_dataloader_that_batches_again_is_refused(
    make_shards: Callable[..., list[str]], tokenizer_file: str, num_workers: int, batch_size: int
) -> None:
    pipe = collated(make_shards([20, 20]), tokenizer_file)
    loader = DataLoader(pipe, batch_size=batch_size, num_workers=num_workers)
    with pytest.raises(ts.ConfigError) as info:
        drain(loader)
    message = original_message(info.value, num_workers)
    assert message.startswith("DataLoader: the pipeline yields batches (Batch -> Collate)")
    assert "DataLoader(pipe, batch_size=None" in message


def test_len_of_such_a_dataloader_is_refused_in_the_main_process(
    make_shards: Callable[..., list[str]], tokenizer_file: str
) -> None:
    pipe = collated(make_shards([20, 20]), tokenizer_file)
    assert len(DataLoader(pipe, batch_size=None)) == len(pipe) == 5
    with pytest.raises(ts.ConfigError, match=r"pass DataLoader\(pipe, batch_size=None"):
        len(DataLoader(pipe))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stateful_dataloader_left_at_its_default_batch_size_is_refused(
    make_shards: Callable[..., list[str]], num_workers: int
) -> None:
    pipe = ts.read_jsonl(make_shards([20, 20])).batch(8)
    with pytest.raises(ts.ConfigError) as info:
        drain(StatefulDataLoader(pipe, num_workers=num_workers))
    assert "batch_size=None" in original_message(info.value, num_workers)


def keep_input_ids(batch: dict[str, Any]) -> torch.Tensor:
    return batch["anchor"]["input_ids"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_collate_fn_of_ones_own_with_batch_size_none_is_fine(
    make_shards: Callable[..., list[str]], tokenizer_file: str, num_workers: int
) -> None:
    pipe = collated(make_shards([20, 20]), tokenizer_file)
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers, collate_fn=keep_input_ids)
    shapes = [tuple(ids.shape) for ids in loader]
    assert len(shapes) == 5 and all(len(s) == 2 and s[0] == 8 for s in shapes)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataloader_may_batch_a_pipeline_of_records(
    make_shards: Callable[..., list[str]], num_workers: int
) -> None:
    loader = DataLoader(ts.read_jsonl(make_shards([20, 20])), batch_size=8, num_workers=num_workers)
    batches = list(loader)
    assert all(len(b["anchor"]) <= 8 for b in batches)
    assert sorted(anchor_index(a) for b in batches for a in b["anchor"]) == list(range(40))


# --------------------------------------------------------------- forgotten set_epoch
def shuffled(paths: list[str]) -> ts.Pipeline:
    return ts.read_jsonl(paths).shuffle(buffer_size=16, seed=3)


def anchors(loader: Any) -> list[int]:
    return [anchor_index(r["anchor"]) for r in loader]


def test_a_second_pass_at_the_same_epoch_warns_once(make_shards: Callable[..., list[str]]) -> None:
    pipe = shuffled(make_shards([30, 30]))
    loader = DataLoader(pipe, batch_size=None)
    first = anchors(loader)
    with pytest.warns(ts.RepeatedEpochWarning) as record:
        second = anchors(loader)
    assert second == first  # what the warning is about
    (warning,) = record
    assert str(warning.message).startswith("the pipeline was iterated again at epoch 0")
    assert "pipe.set_epoch(epoch)" in str(warning.message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per pipeline: the third pass is quiet
        assert anchors(loader) == first


def test_the_warning_comes_from_dataloader_workers_too(make_shards: Callable[..., list[str]]) -> None:
    pipe = shuffled(make_shards([30, 30]))
    loader = DataLoader(pipe, batch_size=None, num_workers=2)
    first = anchors(loader)
    with warnings.catch_warnings():
        # The workers inherit the filter: the warning raised there reaches this process.
        warnings.simplefilter("error", ts.RepeatedEpochWarning)
        with pytest.raises(ts.RepeatedEpochWarning, match="iterated again at epoch 0"):
            drain(loader)
        assert anchors(loader) == first  # warned once per pipeline, not once per worker process


def test_persistent_workers_warn_once(make_shards: Callable[..., list[str]], tmp_path: Path) -> None:
    # An exception in a persistent worker's iter() kills the worker (torch), so here the
    # warning is shown, not raised: the workers (forked) write what they show to a file.
    log = tmp_path / "warnings.log"

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        with log.open("a") as out:
            out.write(f"{category.__name__}: {message}\n")

    pipe = shuffled(make_shards([30, 30]))
    loader = DataLoader(pipe, batch_size=None, num_workers=2, persistent_workers=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ts.RepeatedEpochWarning)
        warnings.showwarning = show
        passes = [anchors(loader) for _ in range(3)]
    assert passes[0] == passes[1] == passes[2]
    assert log.read_text().count("RepeatedEpochWarning: the pipeline was iterated again at epoch 0") == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_set_epoch_before_each_pass_never_warns(make_shards: Callable[..., list[str]], num_workers: int) -> None:
    pipe = shuffled(make_shards([30, 30]))
    loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
    passes = []
    for epoch in (0, 0, 1):
        pipe.set_epoch(epoch)  # the same epoch twice on purpose: a deliberate repeat
        passes.append(anchors(loader))
    assert passes[0] == passes[1] != passes[2]


def test_an_unshuffled_pipeline_never_warns(make_shards: Callable[..., list[str]]) -> None:
    pipe = ts.read_jsonl(make_shards([30, 30])).batch(4)
    assert list(pipe) == list(pipe)


def test_resuming_at_the_same_epoch_does_not_warn(make_shards: Callable[..., list[str]]) -> None:
    pipe = shuffled(make_shards([30, 30]))
    iterator = iter(pipe)
    head = [anchor_index(next(iterator)["anchor"]) for _ in range(10)]
    state = pipe.state_dict()
    pipe.load_state_dict(state)
    rest = [anchor_index(r["anchor"]) for r in pipe]
    assert sorted(head + rest) == list(range(60))


def test_a_pass_after_a_resumed_one_at_the_same_epoch_warns(make_shards: Callable[..., list[str]]) -> None:
    # A new process resumes epoch 0 (no warning), then runs epoch 0 again: the resumed order repeats.
    paths = make_shards([30, 30])
    first = shuffled(paths)
    iterator = iter(first)
    head = [anchor_index(next(iterator)["anchor"]) for _ in range(10)]
    pipe = shuffled(paths)
    pipe.load_state_dict(first.state_dict())
    rest = anchors(pipe)
    with pytest.warns(ts.RepeatedEpochWarning, match="iterated again at epoch 0"):
        again = anchors(pipe)
    assert again == head + rest


def test_the_epoch_loader_sets_the_epoch_itself(make_shards: Callable[..., list[str]]) -> None:
    from torchseq.lightning import EpochLoader

    pipe = shuffled(make_shards([30, 30]))
    loader = EpochLoader(pipe, lambda: 0)  # PairDataModule's validation loader: always epoch 0
    assert anchors(loader) == anchors(loader)

"""Fault-injection soak: remote shards read through a store that keeps failing, at random (seeded).

A loopback HTTP server and moto's S3 server answer data requests with 503s,
connections cut mid-body, stalls (mid-body, or before answering) far longer
than the read timeout, and objects replaced by a new version between two
range requests of one read. Two DataLoader workers read every shard once per
epoch under ``on_error="skip"`` -- 60 shards x 2 epochs per store, 240 shard
reads in all -- then once more under ``on_error="raise"``.

The oracle, per shard and epoch: the records delivered come from one version
of the shard only, each at most once, in the order of that version -- and
either all of them arrived, or the shard is reported (a counted shard fault
naming it in ``pipe.stats()`` under ``skip``; the error that stopped the run
under ``raise``), never both. Nothing else: no record twice, no record of two
versions, no other kind of skip. Each run is bounded in time: a stall that
the read timeout did not end would cost 30 s.

Longer soaks, other seeds (both are environment variables)::

    TORCHSEQ_SOAK_EPOCHS=20 TORCHSEQ_SOAK_SEED=7 python -m pytest tests/sources/test_soak.py -n 0

Record ids encode their place: ``shard * 10_000 + version * 100 + line``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import anchor_index
from tests.support.badinput import gzip_bytes, jsonl_bytes
from tests.support.servers import Faults, serve_files, serve_s3
from torchseq.errors import RemoteError

SEED = int(os.environ.get("TORCHSEQ_SOAK_SEED", "20240611"))
EPOCHS = int(os.environ.get("TORCHSEQ_SOAK_EPOCHS", "2"))
SHARDS = 60
READ_TIMEOUT = 0.25
#: Server-side silence of a stall: far past the read timeout (the server ends it when it shuts down).
STALL_SECONDS = 30.0
#: The time bound of a soak: generous for 2 loaded cores, far below what one unended stall costs.
SECONDS_PER_SHARD_READ = 0.5
RETRY = ts.RetryPolicy(attempts=8, initial_delay=0.001, max_delay=0.01, request_bytes=256,
                       read_timeout=READ_TIMEOUT)
#: Chance of each action per data request (a GET with a Range), the rest are answered normally.
ACTIONS = {"status:503": 0.05, "drop": 0.05, f"stall:{STALL_SECONDS}": 0.01, f"wait:{STALL_SECONDS}": 0.01,
           "replace": 0.02}
#: Reasons a shard may be reported under: the object changed, or the store kept failing one range.
SHARD_FAULTS = {"shard changed", "remote error"}


def version_ids(shard: int, version: int) -> list[int]:
    """The record ids of one version of a shard (6 to 14 lines, so versions differ in size too)."""
    return [shard * 10_000 + version * 100 + line for line in range(6 + (shard + 3 * version) % 9)]


def version_bytes(shard: int, version: int) -> bytes:
    data = jsonl_bytes(version_ids(shard, version))
    return gzip_bytes(data) if shard % 3 == 0 else data  # a third of the shards are gzip streams


@dataclass
class Store:
    """The shards of one store: their current versions, and the seeded fault rule that changes them."""

    num_shards: int
    seed: int
    versions: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def name(self, shard: int) -> str:
        return f"train-{shard:05d}.jsonl" + (".gz" if shard % 3 == 0 else "")

    def shard_of(self, path: str) -> int:
        return int(path.rsplit("/", 1)[1].split("-")[1].split(".")[0])

    def rule(self, method: str, path: str, start: int | None, number: int) -> str:
        if method != "GET" or start is None:
            # HEADs: an occasional 503 (fsspec then tries a GET without Range, which is answered).
            chance = random.Random(f"{self.seed}:{method}:{path}:{number}").random()
            return "status:503" if method == "HEAD" and chance < 0.05 else "ok"
        # A decision per (request, repetition), independent of the order the two workers ask in.
        chance = random.Random(f"{self.seed}:{path}:{start}:{number}").random()
        for action, probability in ACTIONS.items():
            if chance < probability:
                return action
            chance -= probability
        return "ok"

    def next_version(self, path: str) -> tuple[int, bytes]:
        shard = self.shard_of(path)
        with self.lock:
            self.versions[shard] = version = self.versions.get(shard, 0) + 1
        return shard, version_bytes(shard, version)


def check_epoch(urls: list[str], got: list[int], reported: list[str], stopped: bool = False) -> Counter[str]:
    """The oracle for one epoch; returns how many shards were complete and reported (each one or the other).

    ``stopped``: the epoch was ended by an error, so shards after it (and the
    other worker's current one) may be short without being reported.
    """
    by_shard: dict[int, list[int]] = defaultdict(list)
    for record in got:
        by_shard[record // 10_000].append(record)
    assert len(reported) == len(set(reported)), f"a shard reported twice: {sorted(reported)}"
    outcome: Counter[str] = Counter()
    for shard, url in enumerate(urls):
        records = by_shard.pop(shard, [])
        versions = {record // 100 % 100 for record in records}
        assert len(versions) <= 1, f"{url}: records of versions {sorted(versions)} stitched together"
        expected = version_ids(shard, versions.pop()) if records else []
        assert records == expected[: len(records)], f"{url}: not a prefix of one version, in order"
        complete = bool(records) and len(records) == len(expected)
        if url in reported:
            assert not complete, f"{url}: reported, yet all {len(records)} records arrived"
            outcome["reported"] += 1
        elif complete:
            outcome["complete"] += 1
        else:
            assert stopped, f"{url}: {len(records)} of {len(expected)} records and not reported"
    assert not by_shard, f"records of unknown shards: {sorted(by_shard)}"
    return outcome


def read_epoch(pipe: ts.Pipeline, got: list[int]) -> None:
    iterator = iter(DataLoader(pipe, batch_size=None, num_workers=2))
    try:
        for record in iterator:
            got.append(anchor_index(record["anchor"]))
    except Exception as exc:
        exc.__traceback__ = None  # let the loader's workers stop now
        del iterator
        raise


def soak(urls: list[str], storage_options: dict[str, Any] | None, faults: Faults,
         epochs: int) -> None:
    """Read ``urls`` for ``epochs`` epochs under skip, then once under raise; check every epoch."""
    # balance("off"): each shard is read whole by one worker, so its records arrive in order.
    pipe = ts.read_jsonl(urls, on_error="skip", storage_options=storage_options, retry=RETRY).balance("off")
    began = time.monotonic()
    totals: Counter[str] = Counter()
    for epoch in range(epochs):
        pipe.set_epoch(epoch)
        pipe.reset_stats()
        got: list[int] = []
        read_epoch(pipe, got)
        stats = pipe.stats()
        assert set(stats.skipped) <= SHARD_FAULTS, stats.skipped
        reported = [error.place for error in stats.errors]
        assert len(reported) == sum(stats.skipped.values()), "the skip report was cut short"
        totals += check_epoch(urls, got, reported)
        totals += Counter(error.reason for error in stats.errors)
    assert totals["complete"] + totals["reported"] == len(urls) * epochs, totals
    # Under raise: the run stops at the first shard fault, with an error naming the shard.
    raising = ts.read_jsonl(urls, storage_options=storage_options, retry=RETRY).balance("off")
    got = []
    try:
        read_epoch(raising, got)
    except RemoteError as exc:
        # A worker's error arrives as its traceback text; the original message is its last line.
        message = str(exc).rstrip().rsplit("\n", 1)[-1].removeprefix("torchseq.errors.RemoteError: ")
        assert message.split(": ", 1)[0] in urls, f"the error does not start with a shard: {message}"
        check_epoch(urls, got, [], stopped=True)
    else:
        check_epoch(urls, got, [])
    elapsed = time.monotonic() - began
    actions = Counter(seen.action.split(":")[0] for seen in faults.log)
    # The soak did what it says: every kind of fault happened, and replacements were caught.
    assert min(actions[a] for a in ("status", "drop", "stall", "wait", "replace")) >= 1, actions
    assert totals["shard changed"] >= 1, totals
    reads = len(urls) * (epochs + 1)
    assert elapsed < SECONDS_PER_SHARD_READ * reads, f"{elapsed:.0f} s for {reads} shard reads"


@contextmanager
def http_store(store: Store) -> Iterator[tuple[list[str], None, Faults]]:
    files = {f"/data/{store.name(k)}": version_bytes(k, 0) for k in range(store.num_shards)}

    def replace(path: str) -> None:
        files[path] = store.next_version(path)[1]

    faults = Faults(store.rule, replace=replace)
    with serve_files(files, faults) as url:
        yield [f"{url}/data/{store.name(k)}" for k in range(store.num_shards)], None, faults


@contextmanager
def s3_store(store: Store) -> Iterator[tuple[list[str], dict[str, Any], Faults]]:
    import boto3

    bucket = f"soak-{store.num_shards}-{store.seed}"
    holder: dict[str, Any] = {}

    def replace(path: str) -> None:
        holder["client"].put_object(Bucket=bucket, Key=path.rsplit("/", 1)[1], Body=store.next_version(path)[1])

    faults = Faults(store.rule, replace=replace)
    with serve_s3(faults, prefix=f"/{bucket}/") as endpoint:
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "not-a-real-secret",
                   "client_kwargs": {"region_name": "us-east-1"},
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        client = holder["client"] = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="testing",
            aws_secret_access_key="not-a-real-secret", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for k in range(store.num_shards):
            client.put_object(Bucket=bucket, Key=store.name(k), Body=version_bytes(k, 0))
        yield [f"s3://{bucket}/{store.name(k)}" for k in range(store.num_shards)], options, faults


STORES: dict[str, Callable[[Store], Any]] = {"http": http_store, "s3": s3_store}


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_soak_every_record_once_or_its_shard_reported(kind: str) -> None:
    """60 shards x 2 epochs = 120 shard reads per store with 2 workers, plus a run under raise."""
    store = Store(num_shards=SHARDS, seed=SEED)
    with STORES[kind](store) as (urls, options, faults):
        soak(urls, options, faults, epochs=EPOCHS)

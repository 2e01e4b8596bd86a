"""Pipeline statistics, summed over DataLoader workers, readable from the training loop.

Workers cannot hand counters back through the batches (that would hide them
in sample dicts), and a DataLoader worker's memory is its own. So each
pipeline that is iterated allocates a small shared-memory table in the main
process, next to its epoch tensor (see :mod:`torchseq.pipeline.shared`);
forked and spawned workers inherit it. Each worker owns one row and writes its counters there as a JSON
document, periodically (every :data:`FLUSH_SECONDS` while batches flow, and
when its iteration ends) -- never per record. ``pipe.stats()`` in the main
process reads every row and sums them.

A row holds everything its worker id has counted since the pipeline was
created (or since :meth:`StatsTable.reset`): a new iteration, e.g. the next
epoch in a non-persistent worker, starts from the row's previous content.

Counts come from the running stages' ``counters()`` (the one channel for
counters, :mod:`torchseq.protocol`): a dict for the current iteration
(numbers, dicts of numbers, or lists), read at each flush in the worker's
own thread. What the built-in stages count:

* sources: ``records``, ``skipped`` (by reason), ``errors`` (first skipped
  inputs as ``[place, reason, message]``), ``sources`` (records per source),
  ``empty_shards``;
* collate: ``real_tokens``, ``padded_tokens``;
* ``unique=`` batching, ``sample_pairs`` and ``mix``: ``unique.*``,
  ``sample_pairs.*``, ``mix.<source>.*``;
* the pipeline itself: ``batches`` (elements the pipeline yielded) and
  ``active_seconds``.

Other stages add their own counters the same way; unknown names appear in
:attr:`PipelineStats.counters`.

Each row uses a sequence lock: the writer makes the sequence number odd,
writes, makes it even; a reader retries while it is odd or changed.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchseq.errors import SkippedInput, StatsWarning
from torchseq.protocol import Counters

#: Rows of the table: DataLoader worker ids ``0 .. MAX_WORKERS-1`` (the main process is row 0).
MAX_WORKERS = 32
ROW_BYTES = 8192
FLUSH_SECONDS = 0.25
_HEADER = 16  # int64 sequence number, int64 payload length

Provider = Callable[[], Counters]


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Add ``other`` into ``into``: numbers add, dicts merge, lists concatenate."""
    for key, value in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = merge({}, value) if isinstance(value, dict) else (
                list(value) if isinstance(value, list) else value
            )
        elif isinstance(value, dict) and isinstance(mine, dict):
            merge(mine, value)
        elif isinstance(value, list) and isinstance(mine, list):
            mine.extend(value)
        elif isinstance(value, (int, float)) and isinstance(mine, (int, float)):
            into[key] = mine + value
        else:
            into[key] = value
    return into


class StatsTable:
    """The shared-memory table: one row per worker id, written by that worker only."""

    def __init__(self, rows: int = MAX_WORKERS, row_bytes: int = ROW_BYTES) -> None:
        self.rows = rows
        self.row_bytes = row_bytes
        # Zeroing and copying into shared memory run in one thread: in a
        # process forked (by multiprocessing, not DataLoader) after its parent
        # used an OpenMP team, a parallel fill would wait forever for threads
        # the fork did not copy. A table this small gains nothing from threads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.tensor = torch.zeros((rows, -(-row_bytes // 8)), dtype=torch.int64)
            self.tensor.share_memory_()  # type: ignore[no-untyped-call]
        finally:
            torch.set_num_threads(threads)

    def _row(self, row: int) -> np.ndarray:
        view: np.ndarray = self.tensor[row].numpy().view(np.uint8)
        return view

    def write(self, row: int, payload: dict[str, Any]) -> None:
        data = _encode_fitting(payload, self.row_bytes - _HEADER)
        view = self._row(row)
        header = view[:_HEADER].view(np.int64)
        header[0] += 1  # odd: writing
        header[1] = len(data)
        view[_HEADER : _HEADER + len(data)] = np.frombuffer(data, dtype=np.uint8)
        header[0] += 1  # even: consistent

    def read(self, row: int) -> dict[str, Any]:
        view = self._row(row)
        header = view[:_HEADER].view(np.int64)
        for _ in range(1000):
            before = int(header[0])
            if before % 2:
                time.sleep(0)  # a writer is mid-update; let it finish
                continue
            length = int(header[1])
            data = bytes(view[_HEADER : _HEADER + length]) if 0 < length <= self.row_bytes else b""
            if int(header[0]) != before:
                continue
            if not data:
                return {}
            try:
                payload: dict[str, Any] = json.loads(data)
            except ValueError:
                continue  # torn read on a weakly ordered CPU: read again
            return payload
        return {}

    def reset(self) -> None:
        """Forget everything counted so far (call while no iteration is running)."""
        self.tensor.numpy().fill(0)

    def writer(self, row: int, provider: Provider) -> StatsWriter:
        return StatsWriter(self, row, provider)

    def collect(self) -> PipelineStats:
        return PipelineStats.from_rows([self.read(r) for r in range(self.rows)])


def _encode_fitting(payload: dict[str, Any], capacity: int) -> bytes:
    """JSON of ``payload``; drops listed errors (counts stay exact) until it fits."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    errors = list(payload.get("errors", []))
    while len(data) > capacity and errors:
        errors = errors[: len(errors) // 2]
        payload = {**payload, "errors": errors, "errors_truncated": 1}
        data = json.dumps(payload, separators=(",", ":")).encode()
    if len(data) > capacity:  # pathological (thousands of sources): keep the numbers only
        numbers = {k: v for k, v in payload.items() if isinstance(v, (int, float))}
        data = json.dumps({**numbers, "overflow": 1}).encode()
    return data


class StatsWriter:
    """The worker side: flushes the run's counters (``provider()``) into the worker's row."""

    def __init__(self, table: StatsTable, row: int, provider: Provider) -> None:
        self._table = table
        self._row = row if row < table.rows else None
        if self._row is None:
            warnings.warn(
                f"torchseq statistics cover DataLoader workers 0..{table.rows - 1}; worker {row} "
                "is not counted in pipe.stats()",
                StatsWarning,
                stacklevel=2,
            )
        self._base = table.read(row) if self._row is not None else {}
        self._provider = provider
        self._started = time.monotonic()

    def flush(self, batches: int) -> None:
        if self._row is None:
            return
        payload = merge({}, self._base)
        current: dict[str, Any] = {
            "batches": batches,
            "active_seconds": time.monotonic() - self._started,
            "runs": 1,
        }
        merge(current, self._provider())
        self._table.write(self._row, merge(payload, current))

    def observe(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """Pass ``iterator`` through, flushing every :data:`FLUSH_SECONDS` and at the end."""
        monotonic = time.monotonic
        count = 0
        next_flush = monotonic() + FLUSH_SECONDS
        self.flush(0)
        try:
            for item in iterator:
                count += 1
                if monotonic() >= next_flush:
                    self.flush(count)
                    next_flush = monotonic() + FLUSH_SECONDS
                yield item
        finally:
            self.flush(count)


@dataclass(frozen=True)
class PipelineStats:
    """What a pipeline has done, summed over its DataLoader workers (in this process / rank).

    Attributes:
        records: records the sources read (valid ones: what went downstream).
        skipped: skipped inputs by reason ("invalid json", "corrupt shard", ...).
        errors: the first skipped inputs (up to 16 per worker), with place and reason.
        sources: records per source (``name=`` of the reader, or its spec).
        empty_shards: shards read that held no records (valid, but worth knowing).
        batches: elements the pipeline yielded (batches, when it batches).
        real_tokens: non-padding tokens in collated batches (all columns).
        padded_tokens: all tokens in collated batches, padding included.
        active_seconds: summed over workers: time from iteration start to last flush.
        records_per_second: records / active time, summed over workers (their
            parallel rates add up).
        workers: rows (worker ids) that reported.
        counters: everything else stages reported (e.g. ``deferred``).
    """

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[SkippedInput] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)
    empty_shards: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    active_seconds: float = 0.0
    records_per_second: float = 0.0
    workers: int = 0
    counters: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("records", "skipped", "errors", "sources", "empty_shards", "batches", "real_tokens",
              "padded_tokens", "active_seconds", "runs", "errors_truncated")

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def padding_efficiency(self) -> float | None:
        """Real tokens / padded tokens over collated batches (``None`` before any)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else None

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> PipelineStats:
        total: dict[str, Any] = {}
        rate = 0.0
        workers = 0
        for row in rows:
            if not row:
                continue
            workers += 1
            merge(total, row)
            if row.get("active_seconds"):
                rate += row.get("records", 0) / row["active_seconds"]
        return cls(
            records=int(total.get("records", 0)),
            skipped=dict(total.get("skipped", {})),
            errors=[SkippedInput(*e) for e in total.get("errors", [])],
            sources=dict(total.get("sources", {})),
            empty_shards=int(total.get("empty_shards", 0)),
            batches=int(total.get("batches", 0)),
            real_tokens=int(total.get("real_tokens", 0)),
            padded_tokens=int(total.get("padded_tokens", 0)),
            active_seconds=float(total.get("active_seconds", 0.0)),
            records_per_second=rate,
            workers=workers,
            counters={k: v for k, v in total.items() if k not in cls._KNOWN},
        )

    def as_dict(self) -> dict[str, Any]:
        """Builtins only: for logging, ``json.dumps`` or ``all_gather_object`` across ranks."""
        return {
            "records": self.records,
            "skipped": dict(self.skipped),
            "errors": [list(e) for e in self.errors],
            "sources": dict(self.sources),
            "empty_shards": self.empty_shards,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_efficiency": self.padding_efficiency,
            "active_seconds": self.active_seconds,
            "records_per_second": self.records_per_second,
            "workers": self.workers,
            "counters": dict(self.counters),
        }

    def __str__(self) -> str:
        skipped = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        efficiency = self.padding_efficiency
        parts = [
            f"{self.records:,} records ({self.records_per_second:,.0f}/s over {self.workers} worker(s))",
            f"{self.batches:,} batches",
            f"skipped: {skipped}",
        ]
        if efficiency is not None:
            parts.append(f"padding efficiency {efficiency:.3f}")
        return "; ".join(parts)

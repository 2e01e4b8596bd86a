"""Grouping records into batches: fixed size, length-bucketed, token budget.

Each stage yields lists of records. Lengths are token counts from
``record["tokens"]`` (so batching by length comes after ``tokenize``).
Each stage takes ``unique=`` for duplicate-free batches (:mod:`torchseq.unique`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torchseq.context import Context, derive_seed
from torchseq.errors import ConfigError
from torchseq.records import Record
from torchseq.shuffle import restore_rng
from torchseq.state import Slot, decode_records, encode_records
from torchseq.unique import NEW, Limit, Unique, UniquePacker


def _check_positive(stage: str, name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{stage}: {name} must be >= 1, got {value}")


def column_lengths(record: Record) -> tuple[int, ...]:
    """Token lengths per padded column: each text field, negatives by their longest."""
    tokens = record.get("tokens")
    if tokens is None:
        raise ConfigError(
            "length-aware batching needs token ids: put .tokenize(...) before .bucket()/"
            ".batch_by_tokens(), or read pre-tokenized shards"
        )
    lengths = []
    for name, ids in tokens.items():
        if name == "negatives":
            lengths.append(max((len(n) for n in ids), default=0))
        else:
            lengths.append(len(ids))
    return tuple(lengths)


def length_ranking(records: list[Record]) -> list[int]:
    """Indices of ``records`` in the order a pooled batcher cuts them."""
    lengths = [column_lengths(r) for r in records]
    # Sort by the column holding most tokens first (the long side of the
    # pairs), then the others: that column dominates the padding.
    totals = [sum(column) for column in zip(*lengths, strict=True)]
    order = sorted(range(len(totals)), key=totals.__getitem__, reverse=True)
    keys = [tuple(row[i] for i in order) for row in lengths]
    return sorted(range(len(records)), key=keys.__getitem__)


def padded_tokens(records: list[Record]) -> int:
    """Tokens in the padded tensors of a batch: per column, count x longest."""
    if not records:
        return 0
    total = 0
    for name in records[0]["tokens"]:
        if name == "negatives":
            width = max((len(n) for r in records for n in r["tokens"]["negatives"]), default=0)
            total += width * sum(len(r["tokens"]["negatives"]) for r in records)
        else:
            total += len(records) * max(len(r["tokens"][name]) for r in records)
    return total


def real_tokens(records: list[Record]) -> int:
    total = 0
    for r in records:
        for name, ids in r["tokens"].items():
            total += sum(len(n) for n in ids) if name == "negatives" else len(ids)
    return total


@dataclass(frozen=True)
class Batch:
    """Consecutive groups of ``batch_size`` elements.

    State: ``partial`` (the batch being filled); with ``unique``, ``unique``
    (see :class:`~torchseq.unique.UniquePacker`) instead.
    """

    batch_size: int
    drop_last: bool = False
    unique: Unique | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_positive("batch", "batch_size", self.batch_size)

    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[list[Any]]:
        if self.unique is not None:
            packer = UniquePacker(self.unique, FixedSize(self.batch_size), slot.resume.get("unique"))
            slot.snapshot = lambda: {"unique": packer.snapshot()}
            return _unique_stream(upstream, packer, self.drop_last)
        partial: list[Any] = decode_records(slot.resume.get("partial", []))
        live = [partial]
        slot.snapshot = lambda: {"partial": encode_records(live[0])}
        return self._batches(upstream, live)

    def _batches(self, upstream: Iterator[Any], live: list[list[Any]]) -> Iterator[list[Any]]:
        size = self.batch_size
        for item in upstream:
            live[0].append(item)
            if len(live[0]) == size:
                batch, live[0] = live[0], []
                yield batch
        if live[0] and not self.drop_last:
            batch, live[0] = live[0], []
            yield batch


class _PooledBatcher:
    """Shared machinery: fill a pool, sort it by length, cut it, shuffle the cuts.

    State: ``pool`` (records collected), ``ready`` (batches cut, not yet
    yielded), ``rng``; with ``unique`` also ``unique`` (records held back).
    """

    pool_size: int
    seed: int
    shuffle_batches: bool
    unique: Unique | None

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        raise NotImplementedError  # abstract

    def limit(self) -> Limit:
        """The batch-size rule as an incremental :class:`~torchseq.unique.Limit`."""
        raise NotImplementedError  # abstract

    def __call__(self, upstream: Iterator[Record], ctx: Context, slot: Slot) -> Iterator[list[Record]]:
        rng = random.Random(derive_seed(type(self).__name__, self.seed, ctx.epoch, ctx.rank, ctx.worker))
        if "rng" in slot.resume:
            restore_rng(rng, slot.resume["rng"])
        live: dict[str, Any] = {
            "pool": decode_records(slot.resume.get("pool", [])),
            "ready": [decode_records(b) for b in slot.resume.get("ready", [])],
            "packer": None,
        }
        if self.unique is not None:
            live["packer"] = UniquePacker(self.unique, self.limit(), slot.resume.get("unique"))

        def snapshot() -> dict[str, Any]:
            state = {
                "pool": encode_records(live["pool"]),
                "ready": [encode_records(b) for b in live["ready"]],
                "rng": rng.getstate(),
            }
            if live["packer"] is not None:
                state["unique"] = live["packer"].snapshot()
            return state

        slot.snapshot = snapshot
        return self._batches(upstream, live, rng)

    def _release(self, live: dict[str, Any], rng: random.Random, final: bool) -> None:
        pool = live["pool"]
        live["pool"] = []
        if live["packer"] is not None:
            batches = _unique_cut(live["packer"], pool, final, getattr(self, "drop_last", False))
        else:
            batches = self.cut([pool[i] for i in length_ranking(pool)], final)
        if self.shuffle_batches:
            rng.shuffle(batches)
        live["ready"] = batches

    def _batches(self, upstream: Iterator[Record], live: dict[str, Any], rng: random.Random) -> Iterator[list[Record]]:
        ready = live["ready"]
        while ready:
            yield ready.pop()
        for record in upstream:
            live["pool"].append(record)
            if len(live["pool"]) >= self.pool_size:
                self._release(live, rng, final=False)
                ready = live["ready"]
                while ready:
                    yield ready.pop()
        if live["pool"] or (live["packer"] is not None and live["packer"].holding):
            self._release(live, rng, final=True)
            ready = live["ready"]
            while ready:
                yield ready.pop()


@dataclass(frozen=True)
class BucketBatch(_PooledBatcher):
    """Length-bucketed batches of ``batch_size``: similar lengths together, less padding.

    A pool of ``batch_size * pool_batches`` records is sorted by token length
    per column, cut into batches, and the batches are yielded in random order.

    State: ``pool``, ``ready``, ``rng``.
    """

    batch_size: int = 64
    pool_batches: int = 64
    seed: int = 0
    drop_last: bool = False
    shuffle_batches: bool = True
    unique: Unique | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_positive("bucket", "batch_size", self.batch_size)
        _check_positive("bucket", "pool_batches", self.pool_batches)

    @property
    def pool_size(self) -> int:  # type: ignore[override]
        return self.batch_size * self.pool_batches

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        size = self.batch_size
        batches = [records[i : i + size] for i in range(0, len(records), size)]
        if batches and len(batches[-1]) < size and self.drop_last:
            batches.pop()
        return batches

    def limit(self) -> Limit:
        return FixedSize(self.batch_size)


@dataclass(frozen=True)
class TokenBudgetBatch(_PooledBatcher):
    """Batches whose padded size (all text columns) stays within ``max_tokens``.

    The pool is sorted by length and cut greedily: a record joins the batch
    while ``padded_tokens(batch) <= max_tokens``. A record that alone exceeds
    the budget forms its own batch.

    State: ``pool``, ``ready``, ``rng``.
    """

    max_tokens: int = 16_384
    pool_size: int = 4096
    max_batch_size: int | None = None
    seed: int = 0
    shuffle_batches: bool = True
    unique: Unique | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_positive("batch_by_tokens", "max_tokens", self.max_tokens)
        _check_positive("batch_by_tokens", "pool_size", self.pool_size)

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        budget = self.limit()
        batches: list[list[Record]] = []
        current: list[Record] = []
        for record in records:
            if current and not budget.fits(record):
                batches.append(current)
                current = []
                budget.reset()
            current.append(record)
            budget.add(record)
        if current:
            batches.append(current)
        return batches

    def limit(self) -> Limit:
        return TokenBudget(self.max_tokens, self.max_batch_size)


def _cost_columns(record: Record) -> tuple[int, ...]:
    """Per-record padded widths, with negatives counted once per negative."""
    out = []
    for name, ids in record["tokens"].items():
        if name == "negatives":
            out.append(len(ids) * max((len(n) for n in ids), default=0))
        else:
            out.append(len(ids))
    return tuple(out)


# ---------------------------------------------------------------- batch-size rules
class FixedSize:
    """At most ``size`` records per batch."""

    __slots__ = ("size", "count")

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0

    def fits(self, record: Record) -> bool:
        return self.count < self.size

    def add(self, record: Record) -> None:
        self.count += 1

    def full(self) -> bool:
        return self.count >= self.size

    def reset(self) -> None:
        self.count = 0


class TokenBudget:
    """The ``batch_by_tokens`` rule: a record joins while the padded cost stays within ``max_tokens``.

    Cost is (records + 1) x the sum of per-column widths (negatives counted
    once per negative); a record that alone exceeds the budget forms its own
    batch; ``max_batch_size`` caps the count.
    """

    __slots__ = ("max_tokens", "max_batch_size", "count", "widths")

    def __init__(self, max_tokens: int, max_batch_size: int | None) -> None:
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.count = 0
        self.widths: tuple[int, ...] = ()

    def fits(self, record: Record) -> bool:
        if not self.count:
            return True
        if self.max_batch_size is not None and self.count >= self.max_batch_size:
            return False
        widths = [max(a, b) for a, b in zip(self.widths, _cost_columns(record), strict=True)]
        return (self.count + 1) * sum(widths) <= self.max_tokens

    def add(self, record: Record) -> None:
        lengths = _cost_columns(record)
        if self.count:
            lengths = tuple(max(a, b) for a, b in zip(self.widths, lengths, strict=True))
        self.widths = lengths
        self.count += 1

    def full(self) -> bool:
        return self.max_batch_size is not None and self.count >= self.max_batch_size

    def reset(self) -> None:
        self.count = 0
        self.widths = ()


# ---------------------------------------------------------------- duplicate-free batching
def _unique_stream(upstream: Iterator[Any], packer: UniquePacker, drop_last: bool) -> Iterator[list[Any]]:
    """``Batch`` with ``unique``: records in arrival order, batches as they complete."""
    for item in upstream:
        packer.push(item)
        yield from packer.drain()
    packer.finish(drop_last)
    yield from packer.drain()


def _unique_cut(packer: UniquePacker, pool: list[Record], final: bool, drop_last: bool) -> list[list[Record]]:
    """Pooled batchers with ``unique``: what the packer still holds joins the pool, sorted by length.

    The partial batch and deferred records of the previous pool are sorted in
    with the new one, so they land among records of similar length.
    """
    items = packer.take_back() + [(record, NEW) for record in pool]
    for index in length_ranking([record for record, _ in items]):
        packer.push(*items[index])
    if final:
        packer.finish(drop_last)
    batches, packer.ready = packer.ready, []
    return batches

"""Grouping records into batches: fixed size, length-bucketed, token budget.

Each stage yields lists of records. Lengths are token counts from
``record["tokens"]`` (so batching by length comes after ``tokenize``).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context, derive_seed
from torchseq.errors import ConfigError
from torchseq.records import Record
from torchseq.shuffle import restore_rng
from torchseq.state import Slot, decode_records, encode_records


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

    State: ``partial`` (the batch being filled).
    """

    batch_size: int
    drop_last: bool = False

    def __post_init__(self) -> None:
        _check_positive("batch", "batch_size", self.batch_size)

    def balance_quantum(self) -> tuple[int, bool]:
        return self.batch_size, self.drop_last

    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[list[Any]]:
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
    yielded), ``rng``.
    """

    pool_size: int
    seed: int
    shuffle_batches: bool

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        raise NotImplementedError  # abstract

    def pooling(self, ctx: Context) -> tuple[int, int | None]:
        """``(pool size, records per batch to cut pools into, or None to cut freely)``."""
        return self.pool_size, None

    def __call__(self, upstream: Iterator[Record], ctx: Context, slot: Slot) -> Iterator[list[Record]]:
        rng = random.Random(derive_seed(type(self).__name__, self.seed, ctx.epoch, ctx.rank, ctx.worker))
        if "rng" in slot.resume:
            restore_rng(rng, slot.resume["rng"])
        live: dict[str, Any] = {
            "pool": decode_records(slot.resume.get("pool", [])),
            "ready": [decode_records(b) for b in slot.resume.get("ready", [])],
        }
        slot.snapshot = lambda: {
            "pool": encode_records(live["pool"]),
            "ready": [encode_records(b) for b in live["ready"]],
            "rng": rng.getstate(),
        }
        return self._batches(upstream, live, rng, *self.pooling(ctx))

    def _release(self, live: dict[str, Any], rng: random.Random, final: bool, per_batch: int | None) -> None:
        pool = live["pool"]
        live["pool"] = []
        lengths = [column_lengths(r) for r in pool]
        # Sort by the column holding most tokens first (the long side of the
        # pairs), then the others: that column dominates the padding.
        totals = [sum(column) for column in zip(*lengths, strict=True)]
        order = sorted(range(len(totals)), key=totals.__getitem__, reverse=True)
        keys = [tuple(row[i] for i in order) for row in lengths]
        ranked = sorted(range(len(pool)), key=keys.__getitem__)
        pool = [pool[i] for i in ranked]
        batches = self.cut(pool, final)
        if per_batch is not None:
            batches = fit_count(batches, -(-len(pool) // per_batch))
        if self.shuffle_batches:
            rng.shuffle(batches)
        live["ready"] = batches

    def _batches(
        self,
        upstream: Iterator[Record],
        live: dict[str, Any],
        rng: random.Random,
        pool_size: int,
        per_batch: int | None,
    ) -> Iterator[list[Record]]:
        ready = live["ready"]
        while ready:
            yield ready.pop()
        for record in upstream:
            live["pool"].append(record)
            if len(live["pool"]) >= pool_size:
                self._release(live, rng, False, per_batch)
                ready = live["ready"]
                while ready:
                    yield ready.pop()
        if live["pool"]:
            self._release(live, rng, True, per_batch)
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

    def __post_init__(self) -> None:
        _check_positive("bucket", "batch_size", self.batch_size)
        _check_positive("bucket", "pool_batches", self.pool_batches)

    @property
    def pool_size(self) -> int:  # type: ignore[override]
        return self.batch_size * self.pool_batches

    def balance_quantum(self) -> tuple[int, bool]:
        # A pool is a whole number of batches, so n records make ceil(n / batch_size) batches.
        return self.batch_size, self.drop_last

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        size = self.batch_size
        batches = [records[i : i + size] for i in range(0, len(records), size)]
        if batches and len(batches[-1]) < size and self.drop_last:
            batches.pop()
        return batches


@dataclass(frozen=True)
class TokenBudgetBatch(_PooledBatcher):
    """Batches whose padded size (all text columns) stays within ``max_tokens``.

    The pool is sorted by length and cut greedily: a record joins the batch
    while ``padded_tokens(batch) <= max_tokens``. A record that alone exceeds
    the budget forms its own batch.

    Under DDP (equal batches per rank, :mod:`torchseq.balance`) the number of
    batches must follow from record counts alone, so it is planned for the
    worst case. ``max_record_tokens`` bounds one record's padded width summed
    over the columns (each text truncated to ``max_length``), so any
    ``m = max_tokens // max_record_tokens`` records fit the budget. Pools
    are rounded up to a multiple of ``m`` and each pool of ``n`` records is
    cut into exactly ``ceil(n / m)`` batches: the greedy cut never needs
    more, and the largest batches are halved until the count is reached, so
    every batch stays within ``max_tokens`` while records respect the bound.

    State: ``pool``, ``ready``, ``rng``.
    """

    max_tokens: int = 16_384
    pool_size: int = 4096
    max_batch_size: int | None = None
    seed: int = 0
    shuffle_batches: bool = True
    max_record_tokens: int | None = None

    def __post_init__(self) -> None:
        _check_positive("batch_by_tokens", "max_tokens", self.max_tokens)
        _check_positive("batch_by_tokens", "pool_size", self.pool_size)
        if self.max_record_tokens is not None:
            _check_positive("batch_by_tokens", "max_record_tokens", self.max_record_tokens)

    def balance_quantum(self) -> tuple[int, bool]:
        if self.max_record_tokens is None:
            raise ConfigError(
                "batch_by_tokens: equal batches per rank need a bound on one record's tokens; "
                "put .tokenize(max_length=...) before .batch_by_tokens() or pass "
                "max_record_tokens=..., or turn balancing off with .balance('off')"
            )
        per_batch = max(1, self.max_tokens // self.max_record_tokens)
        if self.max_batch_size is not None:
            per_batch = min(per_batch, self.max_batch_size)
        return per_batch, False

    def pooling(self, ctx: Context) -> tuple[int, int | None]:
        if ctx.share is None or not ctx.share.guard:  # one rank: nothing to keep in step
            return self.pool_size, None
        per_batch = self.balance_quantum()[0]
        return -(-self.pool_size // per_batch) * per_batch, per_batch

    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        batches: list[list[Record]] = []
        current: list[Record] = []
        widths: list[int] = []
        for record in records:
            lengths = _cost_columns(record)
            new_widths = [max(a, b) for a, b in zip(widths, lengths, strict=True)] if widths else list(lengths)
            cost = (len(current) + 1) * sum(new_widths)
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (cost > self.max_tokens or full):
                batches.append(current)
                current, new_widths = [], list(lengths)
            current.append(record)
            widths = new_widths
        if current:
            batches.append(current)
        return batches


def fit_count(batches: list[list[Record]], count: int) -> list[list[Record]]:
    """Split length-sorted batches (largest padded size first) until there are ``count``.

    Halving keeps each part within the budget of the whole. Only when a record
    broke the ``max_record_tokens`` bound can there be too many batches; then
    the smallest neighbours are merged, past the budget, and a
    :class:`~torchseq.balance.BalanceWarning` says so.
    """
    costs = [padded_tokens(b) for b in batches]
    while len(batches) < count:
        i = max((j for j in range(len(batches)) if len(batches[j]) > 1), key=costs.__getitem__)
        half = len(batches[i]) // 2
        batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        costs[i : i + 1] = [padded_tokens(batches[i]), padded_tokens(batches[i + 1])]
    if len(batches) > count:
        from torchseq.guard import BalanceWarning

        warnings.warn(
            f"batch_by_tokens: a pool needed {len(batches)} batches where {count} were planned "
            "(a record exceeded max_record_tokens); merged some past max_tokens to keep "
            "ranks in step; raise max_record_tokens",
            BalanceWarning,
            stacklevel=2,
        )
        while len(batches) > count:
            j = min(range(len(batches) - 1), key=lambda k: len(batches[k]) + len(batches[k + 1]))
            batches[j : j + 2] = [batches[j] + batches[j + 1]]
    return batches


def _cost_columns(record: Record) -> tuple[int, ...]:
    """Per-record padded widths, with negatives counted once per negative."""
    out = []
    for name, ids in record["tokens"].items():
        if name == "negatives":
            out.append(len(ids) * max((len(n) for n in ids), default=0))
        else:
            out.append(len(ids))
    return tuple(out)

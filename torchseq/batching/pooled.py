"""Pooled batching: fill a pool, sort it by length, cut it, shuffle the cuts.

``BucketBatch`` cuts pools into batches of a fixed size, ``TokenBudgetBatch``
into batches within a padded-token budget. Lengths are token counts from
``record["tokens"]`` (so batching by length comes after ``tokenize``). Both
take ``unique=`` for duplicate-free batches (:mod:`torchseq.batching.unique`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torchseq.batching.fixed import check_positive
from torchseq.batching.lengths import (
    FixedSize,
    TokenBudget,
    column_lengths,
    dominant_first,
    fit_count,
    length_class,
)
from torchseq.batching.unique import NEW, Limit, Unique, UniquePacker
from torchseq.context import Context
from torchseq.errors import ConfigError
from torchseq.protocol import Counters, Running
from torchseq.records import Record
from torchseq.rng import seeded_random
from torchseq.state import Saved, SnapshotEncoder, State


class _PooledBatcher(ABC):
    """Shared machinery: fill a pool, sort it by length, cut it, shuffle the cuts.

    State: ``pool`` (records collected), ``ready`` (batches cut, not yet
    yielded), ``rng``; with ``unique`` also ``unique`` (records held back).
    """

    seed: int
    shuffle_batches: bool
    unique: Unique | None

    @property
    @abstractmethod
    def pool_limit(self) -> int:
        """Records collected before the pool is sorted and cut."""

    @abstractmethod
    def cut(self, records: list[Record], final: bool) -> list[list[Record]]:
        """Cut length-sorted ``records`` into batches (``final``: the epoch's last pool)."""

    @abstractmethod
    def limit(self) -> Limit:
        """The batch-size rule as an incremental :class:`~torchseq.batching.unique.Limit`."""

    def pooling(self, ctx: Context) -> tuple[int, int | None]:
        """``(pool size, records per batch to cut pools into, or None to cut freely)``."""
        return self.pool_limit, None

    def open(self, upstream: Iterator[Record], ctx: Context, state: State) -> Running:
        return _Pooling(self, upstream, ctx, state)

    def ranking(self, pool: list[Record]) -> list[int]:
        """Indices of ``pool`` in an order that pads little over all columns.

        Sorting by one column leaves the others random within a batch (short
        anchors of a batch of similar positives still pad to the longest
        anchor). So: sort by the column holding most tokens (the long side of
        the pairs), cut provisionally, then re-sort each window of two
        consecutive provisional batches by the other columns. Neighbours in
        the first sort have nearly equal long sides, so the window costs the
        long column little and saves most of the short columns' padding.
        On the dev corpus at batch 64 this takes bucket() from 0.89 to 0.92.
        """
        if not pool:
            return []
        lengths = [column_lengths(r) for r in pool]
        order = dominant_first(lengths)
        primary = [tuple(row[i] for i in order) for row in lengths]
        ranked = sorted(range(len(pool)), key=primary.__getitem__)
        if len(order) < 2:
            return ranked
        secondary = [tuple(row[i] for i in order[1:]) + (row[order[0]],) for row in lengths]
        sizes = [len(b) for b in self.cut([pool[i] for i in ranked], True)]
        out: list[int] = []
        start = 0
        while start < len(ranked):
            step = sum(sizes[:2]) or len(ranked) - start
            sizes = sizes[2:]
            out.extend(sorted(ranked[start : start + step], key=secondary.__getitem__))
            start += step
        return out


class _Pooling(Running):
    """A pooled batcher at work. State: ``pool``, ``ready``, ``rng``; with ``unique`` also ``unique``."""

    __slots__ = ("stage", "rng", "pool", "ready", "packer", "encoder", "pool_size", "per_batch")

    def __init__(self, stage: _PooledBatcher, upstream: Iterator[Record], ctx: Context, state: State) -> None:
        self.stage = stage
        self.rng = seeded_random(type(stage).__name__, stage.seed, ctx.epoch, ctx.rank, ctx.worker)
        self.pool_size, self.per_batch = stage.pooling(ctx)
        self.pool: list[Record] = []
        self.ready: list[list[Record]] = []
        saved = Saved(state) if state else None
        if saved is not None:
            saved.rng("rng", self.rng)
            self.pool = saved.records("pool")
            self.ready = saved.batches("ready")
            if len(self.pool) >= self.pool_size or not all(isinstance(r, dict) for r in self.pool):
                raise saved.wrong("pool", f"fewer than {self.pool_size} records (dicts), the pool's size")
        self.packer: UniquePacker | None = None
        if stage.unique is not None:
            # Under DDP the batch count is planned: keep the plan's batch size
            # (any per_batch records fit the budget) and its number of batches.
            limit = FixedSize(self.per_batch) if self.per_batch is not None else stage.limit()
            resume = saved.nested("unique") if saved is not None else None
            self.packer = UniquePacker(stage.unique, limit, resume, ctx.planned_batches)
        self.encoder = SnapshotEncoder()
        self.iterator = self._batches(upstream)

    def state_dict(self) -> State:
        encoder = self.encoder
        state: State = {
            "pool": encoder.encode(self.pool),
            "ready": encoder.encode_batches(self.ready),
            "rng": self.rng.getstate(),
        }
        encoder.done()
        if self.packer is not None:
            state["unique"] = self.packer.snapshot()
        return state

    def counters(self) -> Counters:
        return self.packer.statistics() if self.packer is not None else {}

    def _release(self, final: bool) -> None:
        stage = self.stage
        pool, self.pool = self.pool, []
        if self.packer is not None:
            batches = _unique_cut(self.packer, pool, final, getattr(stage, "drop_last", False), stage.ranking)
        else:
            batches = stage.cut([pool[i] for i in stage.ranking(pool)], final)
            if self.per_batch is not None:
                batches = fit_count(batches, -(-len(pool) // self.per_batch))
        if stage.shuffle_batches:
            self.rng.shuffle(batches)
        self.ready = batches

    def _batches(self, upstream: Iterator[Record]) -> Iterator[list[Record]]:
        ready = self.ready
        while ready:
            yield ready.pop()
        pool_size = self.pool_size
        for record in upstream:
            self.pool.append(record)
            if len(self.pool) >= pool_size:
                self._release(False)
                ready = self.ready
                while ready:
                    yield ready.pop()
        if self.pool or (self.packer is not None and self.packer.holding):
            self._release(True)
            ready = self.ready
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
        check_positive("bucket", "batch_size", self.batch_size)
        check_positive("bucket", "pool_batches", self.pool_batches)

    @property
    def pool_limit(self) -> int:
        return self.batch_size * self.pool_batches

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "pool_batches": self.pool_batches, "seed": self.seed,
                "drop_last": self.drop_last, "shuffle_batches": self.shuffle_batches,
                "unique": self.unique.settings() if self.unique is not None else None}

    def balance_quantum(self) -> tuple[int, bool]:
        # A pool is a whole number of batches, so n records make ceil(n / batch_size) batches.
        return self.batch_size, self.drop_last

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

    Under DDP (equal batches per rank, :mod:`torchseq.plan`) the number of
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
    pool_size: int | None = None
    max_batch_size: int | None = None
    seed: int = 0
    shuffle_batches: bool = True
    max_record_tokens: int | None = None
    unique: Unique | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check_positive("batch_by_tokens", "max_tokens", self.max_tokens)
        if self.pool_size is not None:
            check_positive("batch_by_tokens", "pool_size", self.pool_size)
        if self.max_record_tokens is not None:
            check_positive("batch_by_tokens", "max_record_tokens", self.max_record_tokens)

    def settings(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "pool_size": self.pool_size, "max_batch_size": self.max_batch_size,
                "seed": self.seed, "shuffle_batches": self.shuffle_batches,
                "max_record_tokens": self.max_record_tokens,
                "unique": self.unique.settings() if self.unique is not None else None}

    @property
    def pool_limit(self) -> int:
        # Budget batches hold max_tokens / (mean padded width) records, so a
        # pool of max_tokens records holds about as many batches (~85 on the
        # dev corpus) whatever the budget; 4,096 at least.
        return self.pool_size if self.pool_size is not None else max(4096, self.max_tokens)

    def ranking(self, pool: list[Record]) -> list[int]:
        """Sort by length class of the column holding most tokens, then the others.

        Budget batches are large and of varying size, so the windows of
        :meth:`_PooledBatcher.ranking` do not fit them. Length classes about
        9% wide (eight per doubling) keep the long column nearly uniform
        within a batch and let the short columns sort within each class.
        """
        if not pool:
            return []
        lengths = [column_lengths(r) for r in pool]
        order = dominant_first(lengths)
        keys = [
            (length_class(row[order[0]]),) + tuple(row[i] for i in order[1:]) + (row[order[0]],)
            for row in lengths
        ]
        return sorted(range(len(pool)), key=keys.__getitem__)

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
        if ctx.planned_batches is None:  # one rank: nothing to keep in step
            return self.pool_limit, None
        per_batch = self.balance_quantum()[0]
        return -(-self.pool_limit // per_batch) * per_batch, per_batch

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


def _unique_cut(
    packer: UniquePacker,
    pool: list[Record],
    final: bool,
    drop_last: bool,
    ranking: Callable[[list[Record]], list[int]],
) -> list[list[Record]]:
    """Pooled batchers with ``unique``: what the packer still holds joins the pool, sorted by length.

    The partial batch and deferred records of the previous pool are sorted in
    with the new one, so they land among records of similar length.
    """
    items = packer.take_back() + [(record, NEW) for record in pool]
    for index in ranking([record for record, _ in items]):
        packer.push(*items[index])
    if final:
        packer.finish(drop_last)
    batches, packer.ready = packer.ready, []
    return batches

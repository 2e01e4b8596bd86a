"""Who reads which records of one epoch: the plan every process computes alike.

From the per-shard record counts, the epoch's shard order and the rank-level
:class:`~torchseq.plan.layout.Layout`, :class:`EpochPlan` gives any worker of
any rank its :class:`WorkerPlan`: the item ranges of the epoch's global
record order it reads, and the batches it yields. The same plain value
describes an unbalanced worker's share (whole shards, or every ``G``-th
record; see :mod:`torchseq.plan.order`).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchseq.errors import ConfigError
from torchseq.plan.layout import layout, worker_slice

# A piece of one shard: (shard index, first item, end item or None for "to the end"), items from 0.
Range = tuple[int, int, int | None]


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's part of an epoch: a plain value, carried to the stages in the context.

    Attributes:
        ranges: ``(shard, start, end)`` item ranges to read, in order; ``end``
            ``None`` reads to the end of the shard.
        num_shards: shards in the spec the plan was made for.
        stride: keep one record in ``stride`` (1 unless split by record).
        offset: keep the records whose running index ``% stride == offset``.
        balanced: made from record counts (equal batches per rank).
        num_records: records planned for this worker (balanced plans).
        num_batches: batches this worker yields (the step guard holds it to that).
        quantum: records per full batch.
        epoch_records: records in one epoch's order (``N``).
        policy: the effective remainder policy (balanced plans).
        guard: hold the batch count exactly (``world_size > 1``).
        empty_shards: shards that counted no records (a balanced plan gives
            them to no one; one worker opens them to report a broken one).
        counts: records per shard the plan was made from (balanced plans;
            reading checks them: a range that reaches a shard's count ends it).
        epoch: the epoch planned.
    """

    ranges: tuple[Range, ...]
    num_shards: int
    stride: int = 1
    offset: int = 0
    balanced: bool = False
    num_records: int | None = None
    num_batches: int | None = None
    quantum: int = 1
    epoch_records: int | None = None
    policy: str | None = None
    guard: bool = False
    empty_shards: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()
    epoch: int = 0

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(shard for shard, _, _ in self.ranges)

    @property
    def record_level(self) -> bool:
        return self.stride > 1

    @property
    def planned_batches(self) -> int | None:
        """Batches this worker must yield when DDP balancing holds it to a plan."""
        return self.num_batches if self.guard else None

    def summary(self) -> dict[str, Any] | None:
        """What a checkpoint records of a balanced plan (``None`` for an unbalanced one)."""
        if not self.balanced:
            return None
        return {"policy": self.policy, "num_records": self.epoch_records, "quantum": self.quantum}


class EpochPlan:
    """Who reads which records in one epoch, for any rank and worker.

    Building it costs ``O(S)`` for ``S`` shards (one prefix sum per shard order
    used); :meth:`worker_plan` then costs ``O(log S + pieces)``.

    Args:
        counts: records per shard, in spec order.
        world_size: ranks.
        quantum: records per full batch.
        policy: one of :data:`~torchseq.plan.layout.POLICIES`.
        epoch: the epoch.
        order_of: the shard order of an epoch (a permutation of ``range(S)``);
            ``"wrap"`` reads the previous and next epochs' orders too.
    """

    def __init__(
        self,
        counts: Sequence[int],
        world_size: int,
        quantum: int,
        policy: str,
        epoch: int,
        order_of: Callable[[int], Sequence[int]],
    ) -> None:
        self.counts = list(counts)
        self.num_records = sum(self.counts)
        self.layout = layout(self.num_records, world_size, quantum, policy, epoch)
        self._order_of = order_of
        self._cycles: dict[int, tuple[Sequence[int], list[int]]] = {}

    def _cycle(self, cycle: int) -> tuple[Sequence[int], list[int]]:
        # "wrap" positions are absolute, so cycle c is epoch c's order; the
        # other policies wrap around (repeat) within the epoch's own order.
        epoch = cycle if self.layout.policy == "wrap" else self.layout.epoch
        cached = self._cycles.get(epoch)
        if cached is None:
            order = self._order_of(epoch)
            cumulative = [0, *itertools.accumulate(self.counts[s] for s in order)]
            cached = self._cycles[epoch] = (order, cumulative)
        return cached

    def ranges(self, begin: int, end: int) -> list[tuple[int, int, int]]:
        """Shard ranges covering stream positions ``[begin, end)``."""
        n = self.num_records
        out: list[tuple[int, int, int]] = []
        if n == 0:
            return out
        position = begin
        while position < end:
            cycle, offset = divmod(position, n)
            stop = min(n, offset + end - position)
            order, cumulative = self._cycle(cycle)
            # Last shard starting at or before ``offset``: skips empty shards.
            i = bisect.bisect_right(cumulative, offset) - 1
            while offset < stop:
                shard = order[i]
                first = offset - cumulative[i]
                last = min(self.counts[shard], stop - cumulative[i])
                if last > first:
                    out.append((shard, first, last))
                offset = cumulative[i] + last
                i += 1
            position = cycle * n + stop
        return out

    def worker_plan(self, rank: int, worker: int = 0, num_workers: int = 1) -> WorkerPlan:
        """The :class:`WorkerPlan` of one worker of one rank."""
        lay = self.layout
        if not (0 <= rank < lay.world_size and 0 <= worker < num_workers):
            raise ConfigError(f"balance: no worker {worker} of {num_workers} on rank {rank} of {lay.world_size}")
        records = lay.rank_records(rank)
        offset, count, batches = worker_slice(records, lay.batches, lay.quantum, num_workers, worker)
        begin = lay.rank_start(rank) + offset
        return WorkerPlan(
            ranges=tuple(self.ranges(begin, begin + count)),
            num_shards=len(self.counts),
            balanced=True,
            num_records=count,
            num_batches=batches,
            quantum=lay.quantum,
            epoch_records=self.num_records,
            policy=lay.policy,
            guard=lay.world_size > 1,
            empty_shards=tuple(i for i, n in enumerate(self.counts) if n == 0),
            counts=tuple(self.counts),
            epoch=lay.epoch,
        )

    def report(self) -> dict[str, Any]:
        """Builtins summary of the epoch: batches per rank and what the policy costs."""
        lay = self.layout
        return {
            "policy": lay.policy,
            "epoch": lay.epoch,
            "records": lay.num_records,
            "world_size": lay.world_size,
            "quantum": lay.quantum,
            "batches_per_rank": lay.batches,
            "records_per_rank": [lay.base + 1] * lay.extra + [lay.base] * (lay.world_size - lay.extra),
            "delivered": lay.delivered,
            "dropped": lay.dropped,
            "repeated": lay.repeated,
            "carried_in": lay.carried_in,
            "carried_out": lay.carried_out,
            "imbalance": lay.imbalance,
        }

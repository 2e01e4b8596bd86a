"""Shard order, and which shards (or records of them) an unbalanced worker reads.

There are ``G = world_size * num_workers`` global workers.

Balanced (the default; see :mod:`torchseq.plan.epoch`): the context carries
this worker's :class:`~torchseq.plan.epoch.WorkerPlan`, a list of item ranges
computed from the per-shard record counts; a shard may be split between
workers at any item, and each worker reads only up to the end of its range.

Unbalanced (``.balance("off")``, or a source without counts): with at least
``G`` shards, worker ``g`` reads every ``G``-th shard of the epoch's shard
order (whole shards, nothing read twice). With fewer shards every worker
reads all of them and keeps every ``G``-th record, counted over the
concatenated stream: slower to read, but every record still arrives exactly
once. Batch counts then differ between ranks when shard sizes do.
"""

from __future__ import annotations

import warnings
from typing import Protocol

from torchseq.errors import ConfigError, RecordLevelSplitWarning
from torchseq.plan.epoch import WorkerPlan
from torchseq.rng import seeded_random


def shard_order(num_shards: int, epoch: int, shuffle_seed: int | None) -> list[int]:
    """The epoch's global shard order: identical in every worker of every rank."""
    order = list(range(num_shards))
    if shuffle_seed is not None:
        seeded_random("shards", shuffle_seed, epoch).shuffle(order)
    return order


class Placement(Protocol):
    """Where a reader runs (a :class:`~torchseq.context.Context` is one)."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def worker(self) -> int: ...

    @property
    def num_workers(self) -> int: ...

    @property
    def epoch(self) -> int: ...


def assign_shards(num_shards: int, where: Placement, shuffle_seed: int | None = None) -> WorkerPlan:
    """Split ``num_shards`` shards among all global workers for ``where.epoch`` (unbalanced)."""
    world_size, num_workers = where.world_size, where.num_workers
    order = shard_order(num_shards, where.epoch, shuffle_seed)
    total, me = world_size * num_workers, where.rank * num_workers + where.worker
    if num_shards >= total:
        return WorkerPlan(tuple((s, 0, None) for s in order[me::total]), num_shards)
    if me == 0 and total > 1:
        warnings.warn(
            f"{num_shards} shard(s) for {total} workers (world_size {world_size} x "
            f"num_workers {num_workers}): splitting by record, so every worker reads every "
            "shard. Write at least as many shards as workers to read each shard once.",
            RecordLevelSplitWarning,
            stacklevel=2,
        )
    return WorkerPlan(tuple((s, 0, None) for s in order), num_shards, stride=total, offset=me)


def check_plan_shards(plan: WorkerPlan, num_shards: int) -> None:
    """A balanced plan must have been made for the shards the source lists now."""
    if plan.num_shards != num_shards:
        raise ConfigError(
            f"the balance plan was made for {plan.num_shards} shards but the source lists "
            f"{num_shards} (did the shard spec change while running?)"
        )

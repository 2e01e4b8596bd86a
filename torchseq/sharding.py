"""Which shards (or which records of them) each global worker reads.

There are ``G = world_size * num_workers`` global workers.

Balanced (the default; see :mod:`torchseq.balance`): the context carries this
worker's :class:`~torchseq.balance.Share`, a list of item ranges computed from
the per-shard record counts; a shard may be split between workers at any
item, and each worker reads only up to the end of its range.

Unbalanced (``.balance("off")``, or a source without counts): with at least
``G`` shards, worker ``g`` reads every ``G``-th shard of the epoch's shard
order (whole shards, nothing read twice). With fewer shards every worker
reads all of them and keeps every ``G``-th record, counted over the
concatenated stream: slower to read, but every record still arrives exactly
once. Batch counts then differ between ranks when shard sizes do.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

from torchseq.context import Context, derive_seed
from torchseq.errors import ConfigError


@dataclass(frozen=True)
class Assignment:
    """One global worker's share of an epoch.

    Attributes:
        ranges: ``(shard, start, end)`` item ranges in reading order; ``end``
            ``None`` reads to the end of the shard.
        stride: keep one record in ``stride`` (1 unless split by record).
        offset: keep the records whose running index ``% stride == offset``.
    """

    ranges: tuple[tuple[int, int, int | None], ...]
    stride: int = 1
    offset: int = 0

    @property
    def shards(self) -> tuple[int, ...]:
        return tuple(shard for shard, _, _ in self.ranges)

    @property
    def record_level(self) -> bool:
        return self.stride > 1


def shard_order(num_shards: int, epoch: int, shuffle_seed: int | None) -> list[int]:
    """The epoch's global shard order: identical in every worker of every rank."""
    order = list(range(num_shards))
    if shuffle_seed is not None:
        random.Random(derive_seed("shards", shuffle_seed, epoch)).shuffle(order)
    return order


def assign_shards(num_shards: int, ctx: Context, shuffle_seed: int | None = None) -> Assignment:
    """Split ``num_shards`` shards among all global workers for ``ctx.epoch`` (unbalanced)."""
    order = shard_order(num_shards, ctx.epoch, shuffle_seed)
    total, me = ctx.num_global_workers, ctx.global_worker
    if num_shards >= total:
        return Assignment(tuple((s, 0, None) for s in order[me::total]))
    if me == 0 and total > 1:
        warnings.warn(
            f"{num_shards} shard(s) for {total} workers (world_size {ctx.world_size} x "
            f"num_workers {ctx.num_workers}): splitting by record, so every worker reads every "
            "shard. Write at least as many shards as workers to read each shard once.",
            RecordLevelSplitWarning,
            stacklevel=2,
        )
    return Assignment(tuple((s, 0, None) for s in order), stride=total, offset=me)


def assignment_for(num_shards: int, ctx: Context, shuffle_seed: int | None = None) -> Assignment:
    """This worker's assignment: its balanced share when the context has one."""
    share = ctx.share
    if share is None:
        return assign_shards(num_shards, ctx, shuffle_seed)
    if share.num_shards != num_shards:
        raise ConfigError(
            f"the balance plan was made for {share.num_shards} shards but the source lists "
            f"{num_shards} (did the shard spec change while running?)"
        )
    return Assignment(share.ranges)


class RecordLevelSplitWarning(UserWarning):
    """Fewer shards than global workers: work is split per record."""

"""Which shards (or which records of them) each global worker reads.

There are ``G = world_size * num_workers`` global workers. With at least ``G``
shards, worker ``g`` reads every ``G``-th shard of the epoch's shard order
(whole shards, nothing read twice). With fewer shards every worker reads all
of them and keeps every ``G``-th record, counted over the concatenated stream:
slower to read, but every record still arrives exactly once.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

from torchseq.context import Context, derive_seed


@dataclass(frozen=True)
class Assignment:
    """One global worker's share of an epoch.

    Attributes:
        shards: indices into the shard list, in reading order.
        stride: keep one record in ``stride`` (1 at shard level).
        offset: keep the records whose running index ``% stride == offset``.
    """

    shards: tuple[int, ...]
    stride: int = 1
    offset: int = 0

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
    """Split ``num_shards`` shards among all global workers for ``ctx.epoch``."""
    order = shard_order(num_shards, ctx.epoch, shuffle_seed)
    total, me = ctx.num_global_workers, ctx.global_worker
    if num_shards >= total:
        return Assignment(tuple(order[me::total]))
    if me == 0 and total > 1:
        warnings.warn(
            f"{num_shards} shard(s) for {total} workers (world_size {ctx.world_size} x "
            f"num_workers {ctx.num_workers}): splitting by record, so every worker reads every "
            "shard. Write at least as many shards as workers to read each shard once.",
            RecordLevelSplitWarning,
            stacklevel=2,
        )
    return Assignment(tuple(order), stride=total, offset=me)


class RecordLevelSplitWarning(UserWarning):
    """Fewer shards than global workers: work is split per record."""

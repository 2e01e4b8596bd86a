"""Running every worker of every rank of a topology in this one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchseq as ts
from torchseq.context import Context


def run_everywhere(
    pipe: ts.Pipeline, world_size: int, num_workers: int, epoch: int = 0,
    key: Callable[[Any], list[int]] | None = None,
) -> list[tuple[int, list[int]]]:
    """``(batches, key(batch) for each batch, concatenated)`` per rank; ``key`` defaults to the batch's guids."""
    ids = key or guids_of
    out = []
    for rank in range(world_size):
        batches, delivered = 0, []
        for worker in range(num_workers):
            for batch in pipe.iterate(Context(rank, world_size, worker, num_workers, epoch, 0)):
                batches += 1
                delivered.extend(ids(batch))
        out.append((batches, delivered))
    return out


def guids_of(batch: Any) -> list[int]:
    """The guids of a batch of records, a collated batch, or one record."""
    if isinstance(batch, list):  # a batch of records
        return [int(r["guid"]) for r in batch]
    if isinstance(batch["guid"], list):  # a collated batch
        return [int(g) for g in batch["guid"]]
    return [int(batch["guid"])]  # a record

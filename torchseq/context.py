"""The execution context a pipeline run sees: topology, epoch and seed.

The pipeline builds one :class:`Context` when iteration starts; stages receive
it and read nothing global themselves. Tests construct contexts directly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torchseq.errors import ConfigError
from torchseq.stats import NULL_STATS, StatsSink

if TYPE_CHECKING:
    from torchseq.balance import Share


@dataclass(frozen=True)
class Topology:
    """Distributed rank and world size."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"invalid topology: rank {self.rank} of world size {self.world_size}")


@dataclass(frozen=True)
class Context:
    """Everything a stage may know about where and when it runs.

    Attributes:
        rank: distributed rank of this process.
        world_size: number of distributed ranks.
        worker: DataLoader worker id within this rank (0 without workers).
        num_workers: DataLoader workers per rank (1 without workers).
        epoch: the epoch being produced.
        seed: the pipeline seed.
        share: this worker's part of a balanced epoch (records to read,
            batches to yield); ``None`` when the pipeline is not balanced.
        stats: where stages register their counters (see :mod:`torchseq.stats`);
            a sink that ignores them unless a pipeline is iterating.
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1
    epoch: int = 0
    seed: int = 0
    share: Share | None = None
    stats: StatsSink = field(default=NULL_STATS, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"invalid topology: rank {self.rank} of world size {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise ConfigError(f"invalid worker: {self.worker} of {self.num_workers}")

    @property
    def global_worker(self) -> int:
        """Index of this worker among all ranks x workers."""
        return self.rank * self.num_workers + self.worker

    @property
    def num_global_workers(self) -> int:
        return self.world_size * self.num_workers

    def where(self) -> str:
        """``rank R worker W epoch E``: the place prefix of messages about this run."""
        return f"rank {self.rank} worker {self.worker} epoch {self.epoch}"


def detect_topology() -> Topology:
    """Rank and world size from ``torch.distributed`` if initialised, else ``RANK``/``WORLD_SIZE``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size())
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return Topology(rank, world_size)


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and machines.

    Python's ``hash`` is salted per process, so a cryptographic digest of the
    parts' reprs is used instead.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")

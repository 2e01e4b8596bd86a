"""The execution context a pipeline run sees: topology, worker, epoch, seed and the worker's plan.

A pure value. The pipeline builds one :class:`Context` when iteration starts
(it alone reads ``torch.distributed``, the environment and the DataLoader's
worker info); stages receive it and read nothing global themselves. Tests
construct contexts directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchseq.errors import ConfigError
from torchseq.plan.epoch import WorkerPlan
from torchseq.rng import derive_seed

__all__ = ["Context", "Topology", "derive_seed"]


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
        plan: this worker's part of a balanced epoch (records to read,
            batches to yield); ``None`` when the pipeline is not balanced.
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1
    epoch: int = 0
    seed: int = 0
    plan: WorkerPlan | None = None

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

    @property
    def planned_batches(self) -> int | None:
        """Batches this worker must yield this epoch when DDP balancing holds it to a plan."""
        return self.plan.planned_batches if self.plan is not None else None

    def where(self) -> str:
        """``rank R worker W epoch E``: the place prefix of messages about this run."""
        return f"rank {self.rank} worker {self.worker} epoch {self.epoch}"

"""Where an iteration runs: the one place that reads ``torch.distributed``, the environment and the worker info.

The pipeline reads its context once, when iteration starts; stages only ever
see the resulting :class:`~torchseq.context.Context`.
"""

from __future__ import annotations

import os

import torch.distributed as dist
from torch.utils.data import get_worker_info

from torchseq.context import Context, Topology


def distributed_topology() -> Topology | None:
    """Rank and world size of an initialised process group, else ``None``."""
    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size())
    return None


def detect_topology() -> Topology:
    """Rank and world size from ``torch.distributed`` if initialised, else ``RANK``/``WORLD_SIZE``."""
    found = distributed_topology()
    if found is not None:
        return found
    return Topology(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def current_context(topology: Topology | None, epoch: int, seed: int) -> Context:
    """The context of an iteration starting now in this process (``topology`` fixed, or detected)."""
    topology = topology or detect_topology()
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Context(topology.rank, topology.world_size, worker, num_workers, epoch, seed)

"""What a pipeline shares with its DataLoader workers: the epoch, its pass marks and the stats table.

All live in shared memory, allocated in the main process, so that forked
and spawned workers -- persistent or not -- see the epoch the main process
sets and write counters the main process reads. They are allocated once per
pipeline that is actually iterated (not for every intermediate pipeline a
fluent chain creates): on the first ``set_epoch``, ``iter``, ``stats()`` or
pickling (spawned workers), and, for forked workers, just before any fork
of the process for every pipeline still alive without them.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch

from torchseq.pipeline.stats import StatsTable

#: ``Shared.passes``: the epoch the latest pass started at (``-1``: none since the last
#: ``set_epoch``), and whether the repeated-epoch warning was given.
STARTED, WARNED = 0, 1


class Shared:
    """One pipeline's epoch (one int64), its pass marks and stats table, in shared memory."""

    __slots__ = ("epoch", "passes", "stats")

    def __init__(self, epoch: int) -> None:
        self.epoch = torch.full((1,), epoch, dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self.passes = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self.stats = StatsTable()


class SharedCell:
    """Allocates :class:`Shared` on first use; until then holds the epoch as a plain int."""

    __slots__ = ("_epoch", "_shared", "__weakref__")

    def __init__(self, epoch: int) -> None:
        self._epoch = epoch
        self._shared: Shared | None = None
        _UNALLOCATED.add(self)

    @property
    def allocated(self) -> bool:
        return self._shared is not None

    def get(self) -> Shared:
        if self._shared is None:
            self._shared = Shared(self._epoch)
            _UNALLOCATED.discard(self)
        return self._shared

    @property
    def epoch(self) -> int:
        return int(self._shared.epoch[0]) if self._shared is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        shared = self.get()
        shared.epoch[0] = epoch
        shared.passes[STARTED] = -1  # set on purpose: the next pass is not a forgotten repeat

    def start_pass(self, epoch: int, resumed: bool) -> bool:
        """Note a pass starting at ``epoch``; true the first time a fresh (not ``resumed``) one repeats the last."""
        passes = self.get().passes
        repeated = not resumed and int(passes[STARTED]) == epoch and not int(passes[WARNED])
        if repeated:
            passes[WARNED] = 1
        passes[STARTED] = epoch
        return repeated

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned worker: the worker must share the main process's memory.
        return {"shared": self.get()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._shared = state["shared"]
        self._epoch = int(self._shared.epoch[0]) if self._shared is not None else 0


_UNALLOCATED: weakref.WeakSet[SharedCell] = weakref.WeakSet()


def _allocate_before_fork() -> None:
    for cell in list(_UNALLOCATED):
        cell.get()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_allocate_before_fork)

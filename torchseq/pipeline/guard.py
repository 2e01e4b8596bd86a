"""The step guard: a worker yields exactly the number of batches its plan says.

The balance plan (:mod:`torchseq.plan`) gives every worker the records for
its batches, computed from record counts. What the counts cannot foresee --
a ``filter``, bad records skipped under ``on_error="skip"`` -- would leave a
rank short and DDP waiting on it forever; the guard closes that gap at the
end of the pipeline. It is part of the runner (:mod:`torchseq.pipeline.run`),
not a stage: it needs a way to read this worker's epoch again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torchseq.errors import BalanceWarning, DataError
from torchseq.pipeline.stats import merge
from torchseq.protocol import Counters, Running
from torchseq.state import State

__all__ = ["BalanceWarning", "StepGuard"]

#: Opens this worker's epoch afresh: the runnings of a new chain (their counters count too).
Restart = Callable[[], list[Running]]


class StepGuard(Running):
    """Hold a worker to exactly ``target`` items per epoch (``world_size > 1``).

    The plan gives every worker the records for its batches; the guard
    catches what counts cannot foresee (a ``filter``, bad records skipped
    under ``on_error="skip"``). Extra items are not delivered; missing ones
    are made up by repeating this worker's first items of the epoch, read
    again from the start. Either way a :class:`~torchseq.errors.BalanceWarning`
    says how many.

    State: ``yielded`` (items delivered), ``replayed`` (repeats delivered;
    present only once repeating has begun).
    """

    __slots__ = ("target", "yielded", "replayed", "replays", "last_pass", "where")

    def __init__(self, upstream: Iterator[Any], target: int, state: State, restart: Restart, where: str) -> None:
        self.target = target
        self.where = where
        self.yielded = int(state.get("yielded", 0))
        self.replayed: int | None = int(state["replayed"]) if "replayed" in state else None
        self.replays: list[Running] = []
        self.last_pass: list[Running] = []  # the chain of the latest replayed pass
        self.iterator = self._steps(upstream, restart)

    def state_dict(self) -> State:
        state: State = {"yielded": self.yielded}
        if self.replayed is not None:
            state["replayed"] = self.replayed
        return state

    def counters(self) -> Counters:
        """What the replayed passes counted (they read records again)."""
        out: Counters = {}
        for running in self.replays:
            merge(out, running.counters())
        return out

    def _steps(self, upstream: Iterator[Any], restart: Restart) -> Iterator[Any]:
        target, where = self.target, self.where
        if self.replayed is None:
            for item in upstream:
                if self.yielded >= target:
                    warnings.warn(
                        f"{where}: the pipeline had more than the {target} batches planned; the "
                        "rest was not delivered, to keep ranks in step (a stage changed the "
                        "record count)",
                        BalanceWarning,
                        stacklevel=2,
                    )
                    return
                self.yielded += 1
                yield item
        if self.yielded >= target:
            return
        produced = self.yielded - (self.replayed or 0)
        if self.replayed is None:
            self.replayed = 0
        replay = self._endless(restart)
        for _ in range(self.replayed):
            next(replay, None)
        for item in replay:
            self.yielded += 1
            self.replayed += 1
            yield item
            if self.yielded >= target:
                break
        if self.yielded < target:
            raise DataError(
                f"{where}: the pipeline yielded none of the {target} batches planned, so there "
                "is nothing to repeat; under DDP every rank must yield the same number of "
                f"batches: {self._why_empty()}"
            )
        warnings.warn(
            f"{where}: the pipeline had {produced} of the {target} batches planned; repeated "
            f"{target - produced} of them to keep ranks in step (a filter or skipped records "
            "changed the record count)",
            BalanceWarning,
            stacklevel=2,
        )

    def _why_empty(self) -> str:
        """What the last (empty) pass of this worker's epoch read, as the reason it yielded nothing."""
        counted: Counters = {}
        for running in self.last_pass:
            merge(counted, running.counters())
        records, skipped = int(counted.get("records", 0)), counted.get("skipped") or {}
        num_skipped = sum(skipped.values())
        if num_skipped and not records:
            reasons = ", ".join(f"{reason} ({n})" for reason, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
            return (
                f"all {num_skipped} of this worker's inputs were skipped by the error policy ({reasons}); "
                "fix or replace the bad shards (`torchseq inspect` lists what is skipped, with places)"
            )
        if records:
            return (
                f"this worker read {records} records and a stage (a filter?) removed all of them; "
                "every rank must keep some records (filter the data before it is sharded instead)"
            )
        return "this worker's share of the epoch holds no records"

    def _endless(self, restart: Restart) -> Iterator[Any]:
        """This worker's epoch again and again; stops if a pass is empty."""
        while True:
            chain = restart()
            self.replays.extend(chain)
            self.last_pass = chain
            empty = True
            for item in chain[-1]:
                empty = False
                yield item
            if empty:
                return

"""The step guard: a worker yields exactly the number of batches its plan says.

The balance plan (:mod:`torchseq.balance`) gives every worker the records for
its batches, computed from record counts. What the counts cannot foresee --
a ``filter``, bad records skipped under ``on_error="skip"`` -- would leave a
rank short and DDP waiting on it forever; the guard closes that gap at the
end of the pipeline.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.errors import DataError
from torchseq.state import Slot


class BalanceWarning(UserWarning):
    """A worker produced a different number of batches than planned; the step guard evened it out."""


@dataclass(frozen=True)
class StepGuard:
    """Hold a worker to exactly ``ctx.share.num_batches`` items per epoch (``world_size > 1``).

    The plan gives every worker the records for its batches; the guard
    catches what counts cannot foresee (a ``filter``, bad records skipped
    under ``on_error="skip"``). Extra items are not delivered; missing ones
    are made up by repeating this worker's first items of the epoch, read
    again from the start. Either way a :class:`BalanceWarning` says how many.

    State: ``yielded`` (items delivered), ``replayed`` (repeats delivered;
    present only once repeating has begun).
    """

    def __call__(
        self,
        upstream: Iterator[Any],
        target: int,
        slot: Slot,
        restart: Callable[[], Iterator[Any]],
        where: str,
    ) -> Iterator[Any]:
        live = {"yielded": int(slot.resume.get("yielded", 0))}
        if "replayed" in slot.resume:
            live["replayed"] = int(slot.resume["replayed"])
        slot.snapshot = lambda: dict(live)
        return self._steps(upstream, target, live, restart, where)

    def _steps(
        self,
        upstream: Iterator[Any],
        target: int,
        live: dict[str, int],
        restart: Callable[[], Iterator[Any]],
        where: str,
    ) -> Iterator[Any]:
        if "replayed" not in live:
            for item in upstream:
                if live["yielded"] >= target:
                    warnings.warn(
                        f"{where}: the pipeline had more than the {target} batches planned; the "
                        "rest was not delivered, to keep ranks in step (a stage changed the "
                        "record count)",
                        BalanceWarning,
                        stacklevel=2,
                    )
                    return
                live["yielded"] += 1
                yield item
        if live["yielded"] >= target:
            return
        produced = live["yielded"] - live.get("replayed", 0)
        live.setdefault("replayed", 0)
        replay = _endless(restart)
        for _ in range(live["replayed"]):
            next(replay, None)
        for item in replay:
            live["yielded"] += 1
            live["replayed"] += 1
            yield item
            if live["yielded"] >= target:
                break
        if live["yielded"] < target:
            raise DataError(
                f"{where}: the pipeline yielded none of the {target} batches planned, so there "
                "is nothing to repeat; under DDP every rank must yield the same number of "
                "batches (did a filter remove all of this worker's records?)"
            )
        warnings.warn(
            f"{where}: the pipeline had {produced} of the {target} batches planned; repeated "
            f"{target - produced} of them to keep ranks in step (a filter or skipped records "
            "changed the record count)",
            BalanceWarning,
            stacklevel=2,
        )


def _endless(restart: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """This worker's epoch again and again; stops if a pass is empty."""
    while True:
        empty = True
        for item in restart():
            empty = False
            yield item
        if empty:
            return

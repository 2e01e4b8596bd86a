"""Fixed-size batches of consecutive elements (``Pipeline.batch``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torchseq.batching.lengths import FixedSize
from torchseq.batching.unique import Unique, UniquePacker
from torchseq.context import Context
from torchseq.errors import ConfigError
from torchseq.protocol import Counters, Running
from torchseq.state import Saved, SnapshotEncoder, State


def check_positive(stage: str, name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{stage}: {name} must be >= 1, got {value}")


@dataclass(frozen=True)
class Batch:
    """Consecutive groups of ``batch_size`` elements.

    State: ``partial`` (the batch being filled); with ``unique``, ``unique``
    (see :class:`~torchseq.batching.unique.UniquePacker`) instead.
    """

    batch_size: int
    drop_last: bool = False
    unique: Unique | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check_positive("batch", "batch_size", self.batch_size)

    def balance_quantum(self) -> tuple[int, bool]:
        return self.batch_size, self.drop_last

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "drop_last": self.drop_last,
                "unique": self.unique.settings() if self.unique is not None else None}

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Running:
        saved = Saved(state) if state else None
        if self.unique is not None:
            packer = UniquePacker(self.unique, FixedSize(self.batch_size),
                                  saved.nested("unique") if saved is not None else None, ctx.planned_batches)
            return _UniqueBatching(packer, upstream, self.drop_last)
        return _Batching(self.batch_size, self.drop_last, upstream, saved)


class _Batching(Running):
    __slots__ = ("partial", "encoder")

    def __init__(self, size: int, drop_last: bool, upstream: Iterator[Any], saved: Saved | None) -> None:
        self.partial: list[Any] = saved.records("partial") if saved is not None else []
        if saved is not None and len(self.partial) >= size:
            raise saved.wrong("partial", f"fewer than batch_size={size} records, not {len(self.partial)}")
        self.encoder = SnapshotEncoder()
        self.iterator = self._batches(upstream, size, drop_last)

    def state_dict(self) -> State:
        return {"partial": self.encoder(self.partial)}

    def _batches(self, upstream: Iterator[Any], size: int, drop_last: bool) -> Iterator[list[Any]]:
        for item in upstream:
            self.partial.append(item)
            if len(self.partial) == size:
                batch, self.partial = self.partial, []
                yield batch
        if self.partial and not drop_last:
            batch, self.partial = self.partial, []
            yield batch


class _UniqueBatching(Running):
    """``Batch`` with ``unique``: records in arrival order, batches as they complete."""

    __slots__ = ("packer",)

    def __init__(self, packer: UniquePacker, upstream: Iterator[Any], drop_last: bool) -> None:
        self.packer = packer
        self.iterator = self._batches(upstream, drop_last)

    def state_dict(self) -> State:
        return {"unique": self.packer.snapshot()}

    def counters(self) -> Counters:
        return self.packer.statistics()

    def _batches(self, upstream: Iterator[Any], drop_last: bool) -> Iterator[list[Any]]:
        packer = self.packer
        for item in upstream:
            packer.push(item)
            yield from packer.drain()
        packer.finish(drop_last)
        yield from packer.drain()

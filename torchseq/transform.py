"""User transforms: ``map`` and ``filter``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.state import Slot


@dataclass(frozen=True)
class Map:
    """Apply ``fn`` to every element. Stateless."""

    fn: Callable[[Any], Any]

    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[Any]:
        return map(self.fn, upstream)


@dataclass(frozen=True)
class Filter:
    """Keep the elements for which ``fn`` is true. Stateless."""

    fn: Callable[[Any], bool]

    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[Any]:
        return filter(self.fn, upstream)

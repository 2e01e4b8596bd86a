"""User transforms: ``map`` and ``filter``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.protocol import Stateless, expect_no_state
from torchseq.state import State


@dataclass(frozen=True)
class Map:
    """Apply ``fn`` to every element. Stateless."""

    fn: Callable[[Any], Any]

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Stateless:
        expect_no_state("map", state)
        return Stateless(map(self.fn, upstream))


@dataclass(frozen=True)
class Filter:
    """Keep the elements for which ``fn`` is true. Stateless."""

    fn: Callable[[Any], bool]

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Stateless:
        expect_no_state("filter", state)
        return Stateless(filter(self.fn, upstream))

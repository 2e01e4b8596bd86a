"""The stage protocol: a stage is opened on its upstream and returns a running object.

A *stage* is a small picklable description (a frozen dataclass). Opening it
inside the process that iterates -- ``stage.open(upstream, ctx, state)``, or
``source.open(ctx, state)`` for the first stage -- returns a
:class:`Running`: the iterator the pipeline chains (``running.iterator``,
usually a generator, so a pass-through stage costs what a generator costs),
plus two questions the pipeline asks it at any time:

* ``state_dict()`` -- what it takes to reproduce the rest of the stream,
  builtins only, current whenever the iterator is suspended (a running stage
  updates its state *before* each ``yield``); ``{}`` for a stateless stage;
* ``counters()`` -- what it has counted so far (numbers, dicts of numbers,
  lists), the one channel through which counts reach ``Pipeline.stats()`` and
  the checkpoint.

``state`` passed to ``open`` is what a previous ``state_dict()`` returned, or
``{}`` for a fresh start. A stage cannot forget to report its state: the
object that iterates is the object that answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from torchseq.context import Context
from torchseq.errors import StateError
from torchseq.state import State

Counters = dict[str, Any]


class Running:
    """A stage opened on its upstream. Subclasses set ``iterator`` and override what they keep."""

    __slots__ = ("iterator",)

    iterator: Iterator[Any]

    def __iter__(self) -> Iterator[Any]:
        return self.iterator

    def state_dict(self) -> State:
        return {}

    def counters(self) -> Counters:
        return {}


class Stateless(Running):
    """A stage with no state and no counters: just its iterator."""

    __slots__ = ()

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator


def expect_no_state(stage: str, state: State) -> None:
    """A stateless stage resumed from a non-empty state: the checkpoint belongs to another graph."""
    if state:
        raise StateError(f"{stage}: checkpoint has state {sorted(state)}, pipeline has a stateless stage")


class Stage(Protocol):
    """What the pipeline chains: ``open`` turns an upstream iterator into a :class:`Running`."""

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Running: ...


class Source(Protocol):
    """The first stage: ``open`` reads from its own input."""

    def open(self, ctx: Context, state: State) -> Running: ...

"""The runner: one iteration of a pipeline in one process.

:class:`Run` is the only place stages are opened and chained. ``Pipeline``
uses it for ``__iter__``, a mixture for each of its children, and the step
guard to read a worker's epoch again -- one runner, one way to validate a
checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from torchseq.context import Context
from torchseq.errors import StateError
from torchseq.pipeline import checkpoint
from torchseq.pipeline.guard import StepGuard
from torchseq.pipeline.planning import worker_plan
from torchseq.pipeline.stats import merge
from torchseq.protocol import Counters, Running, Source, Stage
from torchseq.state import State, within


class Description(Protocol):
    """What the runner needs of a pipeline."""

    @property
    def source(self) -> Source: ...

    @property
    def stages(self) -> tuple[Stage, ...]: ...

    @property
    def balance_policy(self) -> str: ...

    def graph(self) -> list[str]: ...


def open_chain(pipe: Description, ctx: Context, states: Sequence[State], *, resuming: bool = False) -> list[Running]:
    """Open the source and every stage on its upstream, each from its state.

    A stage's :class:`~torchseq.errors.StateError` is put inside its path
    (``stages[2].pending: ...``). Resuming, a stage whose state is ``{}`` must
    keep none: an emptied state would silently start that stage afresh.
    """
    chain = [_opened(0, pipe.source, functools.partial(pipe.source.open, ctx, states[0]), states[0], resuming)]
    for index, (stage, state) in enumerate(zip(pipe.stages, states[1:], strict=True), 1):
        opener = functools.partial(stage.open, chain[-1].iterator, ctx, state)
        chain.append(_opened(index, stage, opener, state, resuming))
    return chain


def _opened(index: int, stage: Any, opener: Callable[[], Running], state: State, resuming: bool) -> Running:
    try:
        running = opener()
    except StateError as exc:
        raise within(f"stages[{index}]", exc) from None
    if resuming and not state and running.state_dict():
        raise StateError(f"stages[{index}]: checkpoint has no state, pipeline has a {type(stage).__name__} "
                         "that keeps one")
    return running


class Run:
    """One iteration: its context (with this worker's plan), its opened stages, its guard.

    Args:
        pipe: the pipeline.
        ctx: where it runs (the plan is computed here).
        state: a checkpoint to continue from, or ``None``.
        nested: a mixture child (no placement fields in its state).

    Raises:
        StateError: the checkpoint does not fit.
    """

    __slots__ = ("pipe", "ctx", "chain", "guard", "iterator", "nested", "_settings")

    def __init__(self, pipe: Description, ctx: Context, state: State | None = None, *, nested: bool = False) -> None:
        state = state or {}
        graph = pipe.graph()
        self.pipe, self.nested = pipe, nested
        self._settings: list[dict[str, Any]] | None = None
        if state and not nested:
            ctx = checkpoint.check_resume(state, graph, ctx)
        elif state:
            checkpoint.check_nested(state, graph, ctx)
        states = checkpoint.check_stages(state, self.settings()) if state else [{}] * (len(pipe.stages) + 1)
        ctx = dataclasses.replace(ctx, plan=worker_plan(pipe.source, pipe.stages, pipe.balance_policy, ctx))
        if state:
            checkpoint.check_plan(state, ctx)
        plan = ctx.plan
        target = plan.num_batches if plan is not None and plan.guard else None
        guard = checkpoint.check_guard(state.get("guard"), target) if state else {}
        self.ctx = ctx
        self.chain = open_chain(pipe, ctx, states, resuming=bool(state))
        iterator: Iterator[Any] = self.chain[-1].iterator
        self.guard: StepGuard | None = None
        if target is not None:
            # Repeats, if ever needed, come from a fresh run of this worker's epoch.
            fresh: list[State] = [{}] * len(states)
            self.guard = StepGuard(iterator, target, guard, lambda: open_chain(pipe, ctx, fresh), ctx.where())
            iterator = self.guard.iterator
        self.iterator = iterator

    def settings(self) -> list[dict[str, Any]]:
        """Each stage's settings, source first (computed once: a tokenizer's digest reads it)."""
        if self._settings is None:
            self._settings = [checkpoint.settings_of(s) for s in (self.pipe.source, *self.pipe.stages)]
        return self._settings

    def __iter__(self) -> Iterator[Any]:
        return self.iterator

    def counters(self) -> Counters:
        """Everything the run's stages (and the guard's replays) counted so far."""
        out: Counters = {}
        for running in self.chain:
            merge(out, running.counters())
        if self.guard is not None:
            merge(out, self.guard.counters())
        return out

    def state_dict(self) -> State:
        """Where the run stands (:mod:`torchseq.pipeline.checkpoint`)."""
        return checkpoint.build(
            self.pipe.graph(), self.ctx, self.settings(), [running.state_dict() for running in self.chain],
            self.guard.state_dict() if self.guard is not None else {}, self.counters(), nested=self.nested,
        )

"""The runner: one iteration of a pipeline in one process.

:class:`Run` is the only place stages are opened and chained. ``Pipeline``
uses it for ``__iter__``, a mixture for each of its children, and the step
guard to read a worker's epoch again -- one runner, one way to validate a
checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from torchseq.context import Context
from torchseq.pipeline import checkpoint
from torchseq.pipeline.guard import StepGuard
from torchseq.pipeline.planning import worker_plan
from torchseq.pipeline.stats import merge
from torchseq.protocol import Counters, Running, Source, Stage
from torchseq.state import State


class Description(Protocol):
    """What the runner needs of a pipeline."""

    @property
    def source(self) -> Source: ...

    @property
    def stages(self) -> tuple[Stage, ...]: ...

    @property
    def balance_policy(self) -> str: ...

    def graph(self) -> list[str]: ...


def open_chain(pipe: Description, ctx: Context, states: Sequence[State]) -> list[Running]:
    """Open the source and every stage on its upstream, each from its state."""
    running = pipe.source.open(ctx, states[0])
    chain = [running]
    for stage, state in zip(pipe.stages, states[1:], strict=True):
        running = stage.open(running.iterator, ctx, state)
        chain.append(running)
    return chain


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

    __slots__ = ("pipe", "ctx", "chain", "guard", "iterator", "nested")

    def __init__(self, pipe: Description, ctx: Context, state: State | None = None, *, nested: bool = False) -> None:
        state = state or {}
        graph = pipe.graph()
        if state and not nested:
            ctx = checkpoint.check_resume(state, graph, ctx)
        elif state:
            checkpoint.check_nested(state, graph)
        ctx = dataclasses.replace(ctx, plan=worker_plan(pipe.source, pipe.stages, pipe.balance_policy, ctx))
        if state:
            checkpoint.check_plan(state.get("plan"), ctx)
        states = state.get("stages") or [{}] * (len(pipe.stages) + 1)
        self.pipe, self.ctx, self.nested = pipe, ctx, nested
        self.chain = open_chain(pipe, ctx, states)
        iterator: Iterator[Any] = self.chain[-1].iterator
        self.guard: StepGuard | None = None
        plan = ctx.plan
        if plan is not None and plan.guard and plan.num_batches is not None:
            # Repeats, if ever needed, come from a fresh run of this worker's epoch.
            fresh: list[State] = [{}] * len(states)
            self.guard = StepGuard(iterator, plan.num_batches, state.get("guard") or {},
                                   lambda: open_chain(pipe, ctx, fresh), ctx.where())
            iterator = self.guard.iterator
        self.iterator = iterator

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
            self.pipe.graph(), self.ctx, [running.state_dict() for running in self.chain],
            self.guard.state_dict() if self.guard is not None else {}, self.counters(), nested=self.nested,
        )

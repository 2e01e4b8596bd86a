"""The Pipeline: an immutable description -- a source plus an ordered list of stages.

Each fluent method is a one-line builder that appends a stage object (logic
lives in the stage classes). Nothing is opened until iteration, which happens
inside each DataLoader worker: ``__iter__`` reads the context once (topology,
worker, epoch, seed) and hands it to a :class:`~torchseq.pipeline.run.Run`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.data import IterableDataset

from torchseq.context import Context, Topology
from torchseq.errors import ConfigError
from torchseq.pipeline import checkpoint, loading
from torchseq.pipeline.builders import Builders
from torchseq.pipeline.placement import current_context, distributed_topology
from torchseq.pipeline.planning import batches_per_rank, epoch_plan
from torchseq.pipeline.run import Run
from torchseq.pipeline.shared import SharedCell
from torchseq.pipeline.stats import PipelineStats
from torchseq.plan import check_policy
from torchseq.state import State


class Pipeline(Builders, IterableDataset[Any]):
    """A streaming pipeline; an ordinary ``IterableDataset``.

    Use it as ``DataLoader(pipe, batch_size=None, num_workers=k)``: the
    pipeline batches itself. Build it with :func:`~torchseq.read_jsonl` /
    :func:`~torchseq.read_webdataset` and the fluent methods, each of which
    returns a new pipeline.

    Call :meth:`set_epoch` before each epoch (in the main process); it reaches
    persistent and non-persistent workers alike.

    Every rank yields the same number of batches per epoch (see
    :meth:`balance`); ``len(pipe)`` is that number where it is known.
    """

    def __init__(
        self,
        source: Any,
        stages: tuple[Any, ...] = (),
        *,
        seed: int = 0,
        topology: Topology | None = None,
        epoch: int = 0,
        balance: str = "partial",
    ) -> None:
        self._source = source
        self._stages = tuple(stages)
        self._seed = seed
        self._topology = topology
        self._balance = check_policy(balance)
        self._shared = SharedCell(epoch)
        self._resume: State | None = None
        self._run: Run | None = None

    # ----------------------------------------------------------- description
    @property
    def source(self) -> Any:
        """The pipeline's source (a reader, or a mixture of pipelines)."""
        return self._source

    @property
    def stages(self) -> tuple[Any, ...]:
        """The stages after the source, in order."""
        return self._stages

    @property
    def balance_policy(self) -> str:
        """The remainder policy set by :meth:`balance`."""
        return self._balance

    def graph(self) -> list[str]:
        """The names of the source and the stages (what a checkpoint is checked against)."""
        return [type(self._source).__name__] + [type(s).__name__ for s in self._stages]

    def _derive(self, **changes: Any) -> Pipeline:
        settings: dict[str, Any] = {
            "source": self._source, "stages": self._stages, "seed": self._seed,
            "topology": self._topology, "epoch": self.epoch, "balance": self._balance,
        }
        settings.update(changes)
        return Pipeline(settings.pop("source"), settings.pop("stages"), **settings)

    def _then(self, stage: Any) -> Pipeline:
        return self._derive(stages=(*self._stages, stage))

    # ----------------------------------------------------------- epochs
    @property
    def epoch(self) -> int:
        return self._shared.epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch for the next iteration (call in the main process, before ``iter(loader)``).

        A seeded pipeline iterated again without it repeats its order: it warns once (``RepeatedEpochWarning``).
        """
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self._shared.set_epoch(epoch)

    # ----------------------------------------------------------- running
    def context(self) -> Context:
        """The context an iteration started now, in this process, would see."""
        return current_context(self._topology, self.epoch, self._seed)

    def __iter__(self) -> Iterator[Any]:
        loading.refuse_rebatching(self, sys._getframe(1))
        ctx = self.context()
        if ctx.worker == 0:  # one process per rank notes each pass
            loading.note_pass(self._shared, self._source, self._stages, ctx.epoch, resumed=self._resume is not None)
        return self.iterate(ctx)

    def iterate(self, ctx: Context) -> Iterator[Any]:
        """Run as the worker ``ctx`` describes (tests and simulations; ``iter`` uses :meth:`context`)."""
        shared = self._shared.get()
        resume, self._resume = self._resume, None
        run = Run(self, ctx, resume)
        self._run = run
        return shared.stats.writer(ctx.worker, run.counters).observe(run.iterator)

    # ----------------------------------------------------------- statistics
    def stats(self) -> PipelineStats:
        """What this pipeline has done so far, summed over its DataLoader workers.

        Records read, skipped inputs by reason (and the first of them with
        their place), records per source, batches, padding efficiency,
        throughput. Call it in the main process, e.g. every N steps of the
        training loop; workers update it every fraction of a second and when
        their iteration ends. Counts accumulate over epochs until
        :meth:`reset_stats`. Under DDP each rank sees its own; gather
        ``stats().as_dict()`` with ``all_gather_object`` for the total.
        """
        return self._shared.get().stats.collect()

    def reset_stats(self) -> None:
        """Start counting from zero (call between epochs, while no worker iterates)."""
        self._shared.get().stats.reset()

    # ----------------------------------------------------------- length
    def __len__(self) -> int:
        """Batches each rank yields in the current epoch.

        Known when the pipeline is balanced (the default) over shard sources:
        from the record counts, the world size, the batch size and the policy;
        the DataLoader's ``num_workers`` does not change it. Under DDP the step
        guard makes it exact even when a filter drops records; in a single
        process such a filter makes it an upper bound.

        Raises:
            TypeError: the number cannot be known (``DataLoader``, Lightning
                and tqdm treat this as "no length").
        """
        loading.refuse_rebatching(self, sys._getframe(1))
        return batches_per_rank(self._source, self._stages, self._balance, self.context())

    def __bool__(self) -> bool:
        return True  # never count records just to answer ``if pipe:``

    def balance_report(self, world_size: int | None = None, epoch: int | None = None) -> dict[str, Any]:
        """What balancing does to one epoch: batches per rank, records dropped or repeated.

        Args:
            world_size: ranks (default: the detected or fixed topology).
            epoch: the epoch (default: the current one; only ``"wrap"`` varies).

        Raises:
            ConfigError: the pipeline is not balanced over shard sources.
        """
        ctx = self.context()
        ctx = dataclasses.replace(
            ctx, rank=0, world_size=world_size or ctx.world_size,
            epoch=ctx.epoch if epoch is None else epoch,
        )
        plan = epoch_plan(self._source, self._stages, self._balance, ctx)
        if plan is None:
            raise ConfigError("balance_report: the pipeline is not balanced (policy 'off' or no shard source)")
        return plan.report()

    # ----------------------------------------------------------- state
    def state_dict(self) -> State:
        """Where the current iteration in this process stands; ``{}`` before any.

        Holds builtins only, so ``torch.load(weights_only=True)`` reads it
        (format: :mod:`torchseq.pipeline.checkpoint`).
        """
        if self._run is None:
            return dict(self._resume) if self._resume else {}
        return self._run.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next iteration; checked against the pipeline then.

        Raises:
            StateError: a field does not fit, e.g. ``num_workers: checkpoint has
                8, pipeline has 4`` (the stage count at once, the rest at the next ``iter``).
        """
        if isinstance(state, Mapping) and not state:
            self._resume = None
            return
        checkpoint.check_shape(state, len(self._stages) + 1)
        self._resume = dict(state)

    # ----------------------------------------------------------- plumbing
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"] = None  # live generators stay in their process
        if state["_topology"] is None:
            # Capture the rank in the main process: a spawned worker has no
            # process group of its own.
            state["_topology"] = distributed_topology()
        return state

    def __repr__(self) -> str:
        lines = [f"Pipeline(seed={self._seed}, epoch={self.epoch}, balance={self._balance!r})",
                 f"  {self._source!r}"]
        lines += [f"  -> {stage!r}" for stage in self._stages]
        return "\n".join(lines)

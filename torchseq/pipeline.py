"""The Pipeline: an immutable source plus an ordered list of stages.

Nothing is opened until iteration, which happens inside each DataLoader
worker. At ``__iter__`` the pipeline reads its context once (topology, worker,
epoch, seed) and chains the stages' generators.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from torch.utils.data import IterableDataset, get_worker_info

from torchseq.batching import Batch, BucketBatch, TokenBudgetBatch
from torchseq.collate import Collate
from torchseq.context import Context, Topology, detect_topology
from torchseq.errors import ConfigError, StateError
from torchseq.records import TEXT_FIELDS
from torchseq.shuffle import BufferShuffle
from torchseq.sources import JsonlSource, ShardSource, ShardSpec, WebDatasetSource
from torchseq.sources.base import DEFAULT_MAX_RECORD_BYTES
from torchseq.sources.remote import RetryPolicy
from torchseq.state import Slot, State, check_field
from torchseq.stats import PipelineStats, StatsTable
from torchseq.tokenize import Tokenize, tokenizer_spec
from torchseq.transform import Filter, Map

STATE_VERSION = 1


class Source(Protocol):
    def __call__(self, ctx: Context, slot: Slot) -> Iterator[Any]: ...


class Stage(Protocol):
    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[Any]: ...


class _Run:
    """The live part of one iteration in one process: its context and stage slots."""

    __slots__ = ("ctx", "slots")

    def __init__(self, ctx: Context, slots: list[Slot]) -> None:
        self.ctx = ctx
        self.slots = slots


def _stage_name(stage: Any) -> str:
    return type(stage).__name__


class Pipeline(IterableDataset[Any]):
    """A streaming pipeline; an ordinary ``IterableDataset``.

    Use it as ``DataLoader(pipe, batch_size=None, num_workers=k)``: the
    pipeline batches itself. Build it with :func:`read_jsonl` /
    :func:`read_webdataset` and the fluent methods, each of which returns a
    new pipeline.

    Call :meth:`set_epoch` before each epoch (in the main process); it reaches
    persistent and non-persistent workers alike.
    """

    def __init__(
        self,
        source: Source,
        stages: tuple[Stage, ...] = (),
        *,
        seed: int = 0,
        topology: Topology | None = None,
        epoch: int = 0,
    ) -> None:
        self._source = source
        self._stages = tuple(stages)
        self._seed = seed
        self._topology = topology
        # One int64 in shared memory: forked and spawned workers (persistent
        # or not) see the epoch the main process sets, when they next iterate.
        self._epoch = torch.full((1,), epoch, dtype=torch.int64).share_memory_()
        self._resume: State | None = None
        self._run: _Run | None = None
        # Shared memory as well: workers write their counters, stats() sums them.
        self._stats = StatsTable()

    # ----------------------------------------------------------- building
    def _then(self, stage: Stage) -> Pipeline:
        return Pipeline(self._source, (*self._stages, stage), seed=self._seed,
                        topology=self._topology, epoch=self.epoch)

    def _with_source(self, source: Source) -> Pipeline:
        return Pipeline(source, self._stages, seed=self._seed, topology=self._topology, epoch=self.epoch)

    def shuffle(self, buffer_size: int = 10_000, seed: int = 0) -> Pipeline:
        """Shuffle the shard order and, within a rolling buffer, the records.

        Seeded from ``(seed, epoch, rank, worker)``: the same seed gives the
        same order; :meth:`set_epoch` reshuffles.
        """
        source = self._source
        if self._stages:
            raise ConfigError("shuffle() must come right after the reader (it also shuffles shard order)")
        if isinstance(source, ShardSource):
            source = dataclasses.replace(source, shuffle_seed=seed)
        return self._with_source(source)._then(BufferShuffle(buffer_size, seed))

    def tokenize(
        self,
        tokenizer: Any,
        max_length: int = 128,
        fields: tuple[str, ...] | list[str] | None = None,
        *,
        chunk_size: int = 64,
        pad_id: int | None = None,
    ) -> Pipeline:
        """Tokenize text fields inside the workers (see :class:`~torchseq.tokenize.Tokenize`).

        Args:
            tokenizer: a ``tokenizer.json`` path, a ``tokenizers.Tokenizer``, a
                ``transformers`` fast tokenizer, or a callable mapping a list of
                texts to a list of id lists.
            max_length: truncate every text to this many tokens (special tokens included).
            fields: text fields to tokenize; default anchor, positive, negatives.
        """
        return self._then(Tokenize(tokenizer_spec(tokenizer), max_length,
                                   tuple(fields) if fields else TEXT_FIELDS, chunk_size, pad_id))

    def map(self, fn: Callable[[Any], Any]) -> Pipeline:
        """Apply ``fn`` to each element."""
        return self._then(Map(fn))

    def filter(self, fn: Callable[[Any], bool]) -> Pipeline:
        """Keep elements for which ``fn`` returns true."""
        return self._then(Filter(fn))

    def batch(self, batch_size: int, drop_last: bool = False) -> Pipeline:
        """Group consecutive elements into lists of ``batch_size``."""
        return self._then(Batch(batch_size, drop_last))

    def bucket(
        self, batch_size: int, *, pool_batches: int = 64, seed: int = 0, drop_last: bool = False
    ) -> Pipeline:
        """Length-bucketed batches: sort a pool of ``batch_size * pool_batches`` by length, cut, shuffle."""
        return self._then(BucketBatch(batch_size, pool_batches, seed, drop_last))

    def batch_by_tokens(
        self, max_tokens: int, *, pool_size: int = 4096, max_batch_size: int | None = None, seed: int = 0
    ) -> Pipeline:
        """Batches whose padded token count over all text columns stays within ``max_tokens``."""
        return self._then(TokenBudgetBatch(max_tokens, pool_size, max_batch_size, seed))

    def collate(self, pad_to_multiple_of: int | None = None, pad_id: int | None = None) -> Pipeline:
        """Pad batches into tensors (layout in :mod:`torchseq.collate`)."""
        tokenizer_stage = next((s for s in reversed(self._stages) if isinstance(s, Tokenize)), None)
        return self._then(Collate(pad_to_multiple_of, pad_id, tokenizer_stage))

    def with_topology(self, rank: int, world_size: int) -> Pipeline:
        """Fix rank and world size instead of detecting them (tests, custom launchers)."""
        return Pipeline(self._source, self._stages, seed=self._seed,
                        topology=Topology(rank, world_size), epoch=self.epoch)

    # ----------------------------------------------------------- epochs
    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch for the next iteration (call in the main process, before ``iter(loader)``)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = epoch

    # ----------------------------------------------------------- running
    def context(self) -> Context:
        """The context an iteration started now, in this process, would see."""
        topology = self._topology or detect_topology()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return Context(topology.rank, topology.world_size, worker, num_workers, self.epoch, self._seed)

    def __iter__(self) -> Iterator[Any]:
        ctx = self.context()
        resume, self._resume = self._resume, None
        stage_states: list[State] = [{}] * (len(self._stages) + 1)
        if resume:
            ctx = self._check_resume(resume, ctx)
            stage_states = resume["stages"]
        stats = self._stats.writer(ctx.worker)
        ctx = dataclasses.replace(ctx, stats=stats)
        slots = [Slot(s) for s in stage_states]
        self._run = _Run(ctx, slots)
        iterator = self._source(ctx, slots[0])
        for stage, slot in zip(self._stages, slots[1:]):
            iterator = stage(iterator, ctx, slot)
        return stats.observe(iterator)

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
        return self._stats.collect()

    def reset_stats(self) -> None:
        """Start counting from zero (call between epochs, while no worker iterates)."""
        self._stats.reset()

    def _check_resume(self, resume: State, ctx: Context) -> Context:
        check_field("version", resume.get("version"), STATE_VERSION)
        check_field("stages", resume.get("graph"), self._graph())
        check_field("world_size", resume.get("world_size"), ctx.world_size)
        check_field("rank", resume.get("rank"), ctx.rank)
        check_field("num_workers", resume.get("num_workers"), ctx.num_workers)
        check_field("worker", resume.get("worker"), ctx.worker)
        check_field("seed", resume.get("seed"), ctx.seed)
        return dataclasses.replace(ctx, epoch=int(resume["epoch"]))

    def _graph(self) -> list[str]:
        return [_stage_name(self._source)] + [_stage_name(s) for s in self._stages]

    # ----------------------------------------------------------- state
    def state_dict(self) -> State:
        """Where the current iteration in this process stands; ``{}`` before any.

        Holds builtins only, so ``torch.load(weights_only=True)`` reads it.
        """
        run = self._run
        if run is None:
            return dict(self._resume) if self._resume else {}
        ctx = run.ctx
        return {
            "version": STATE_VERSION,
            "graph": self._graph(),
            "epoch": ctx.epoch,
            "seed": ctx.seed,
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "worker": ctx.worker,
            "num_workers": ctx.num_workers,
            "stages": [slot.snapshot() for slot in run.slots],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next iteration; checked against the pipeline then.

        Raises:
            StateError: (at the next ``iter``) a field does not fit, e.g.
                ``num_workers: checkpoint has 8, pipeline has 4``.
        """
        if not state:
            self._resume = None
            return
        if "stages" not in state or len(state["stages"]) != len(self._stages) + 1:
            raise StateError(
                f"stages: checkpoint has {len(state.get('stages', []))}, "
                f"pipeline has {len(self._stages) + 1}"
            )
        self._resume = dict(state)

    # ----------------------------------------------------------- plumbing
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"] = None  # live generators' closures stay in their process
        if state["_topology"] is None:
            import torch.distributed as dist

            # Capture the rank in the main process: a spawned worker has no
            # process group of its own.
            if dist.is_available() and dist.is_initialized():
                state["_topology"] = Topology(dist.get_rank(), dist.get_world_size())
        return state

    def __repr__(self) -> str:
        lines = [f"Pipeline(seed={self._seed}, epoch={self.epoch})", f"  {self._source!r}"]
        lines += [f"  -> {stage!r}" for stage in self._stages]
        return "\n".join(lines)


def _reader(cls: type[ShardSource], spec: ShardSpec, **options: Any) -> Pipeline:
    return Pipeline(cls.create(spec, **options))


def read_jsonl(
    spec: ShardSpec,
    fields: Mapping[str, str] | None = None,
    on_error: str = "raise",
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    max_errors: int | None = None,
    max_error_rate: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    allow_pipe: bool = False,
    name: str | None = None,
) -> Pipeline:
    """Stream pair records from JSON Lines shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``).

    Args:
        spec: a path, URL (``https://``, ``s3://``, ``gs://``), glob, brace range
            (``train-{00000..00007}.jsonl.gz``) or a list of them.
        fields: map record fields to source keys, e.g. ``{"anchor": "question",
            "positive": "answer"}``; needed only for dicts of no known format.
        on_error: ``"raise"`` (default), ``"skip"`` or ``"warn"`` for bad lines and shards;
            skipped inputs are counted by reason in :meth:`Pipeline.stats`.
        max_record_bytes: longer lines are bad input (and never read into memory whole).
        max_errors: with skip/warn, stop when a worker skipped more inputs than this.
        max_error_rate: with skip/warn, stop when a worker skipped more than this
            fraction of its inputs (judged after 1,000 inputs and at the end).
        storage_options: passed to ``fsspec.filesystem(protocol, **storage_options)``
            for URLs, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3.
        retry: how remote reads retry transient faults
            (:class:`~torchseq.sources.remote.RetryPolicy`).
        allow_pipe: allow ``pipe:COMMAND`` specs, which run a shell command.
        name: label of this source in ``stats().sources``.

    Raises:
        ConfigError: invalid arguments (at once); data errors are raised while
            iterating, as :class:`~torchseq.errors.DataError` naming ``path:line``.
    """
    return _reader(JsonlSource, spec, fields=fields, on_error=on_error,
                   max_record_bytes=max_record_bytes, max_errors=max_errors,
                   max_error_rate=max_error_rate, storage_options=storage_options, retry=retry,
                   allow_pipe=allow_pipe, name=name)


def read_webdataset(
    spec: ShardSpec,
    fields: Mapping[str, str] | None = None,
    on_error: str = "raise",
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    max_errors: int | None = None,
    max_error_rate: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    allow_pipe: bool = False,
    name: str | None = None,
) -> Pipeline:
    """Stream pair records from WebDataset tar shards (``.tar``, ``.tar.gz``).

    Members per sample are described in :mod:`torchseq.sources.webdataset`;
    pickle members are refused. Arguments as for :func:`read_jsonl`;
    ``max_record_bytes`` bounds the members of one sample together.
    """
    return _reader(WebDatasetSource, spec, fields=fields, on_error=on_error,
                   max_record_bytes=max_record_bytes, max_errors=max_errors,
                   max_error_rate=max_error_rate, storage_options=storage_options, retry=retry,
                   allow_pipe=allow_pipe, name=name)

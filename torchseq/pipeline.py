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

from torchseq.balance import EpochPlan, batches_per_rank, check_policy, plan_epoch
from torchseq.batching import Batch, BucketBatch, TokenBudgetBatch
from torchseq.collate import Collate
from torchseq.context import Context, Topology, detect_topology
from torchseq.errors import ConfigError, StateError
from torchseq.guard import StepGuard
from torchseq.records import TEXT_FIELDS
from torchseq.sampling import SamplePairs
from torchseq.shuffle import BufferShuffle
from torchseq.sources import JsonlSource, ShardSource, ShardSpec, WebDatasetSource
from torchseq.sources.base import DEFAULT_MAX_RECORD_BYTES
from torchseq.sources.remote import RetryPolicy
from torchseq.state import Slot, State, check_field
from torchseq.stats import PipelineStats, StatsTable
from torchseq.tokenize import Tokenize, tokenizer_spec
from torchseq.transform import Filter, Map
from torchseq.unique import Unique, as_unique

STATE_VERSION = 2


class Source(Protocol):
    def __call__(self, ctx: Context, slot: Slot) -> Iterator[Any]: ...


class Stage(Protocol):
    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[Any]: ...


class _Run:
    """The live part of one iteration in one process: its context and stage slots."""

    __slots__ = ("ctx", "slots", "guard")

    def __init__(self, ctx: Context, slots: list[Slot], guard: Slot) -> None:
        self.ctx = ctx
        self.slots = slots
        self.guard = guard


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

    Every rank yields the same number of batches per epoch (see
    :meth:`balance` and :mod:`torchseq.balance`); ``len(pipe)`` is that number
    where it is known.
    """

    def __init__(
        self,
        source: Source,
        stages: tuple[Stage, ...] = (),
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
        # One int64 in shared memory: forked and spawned workers (persistent
        # or not) see the epoch the main process sets, when they next iterate.
        self._epoch = torch.full((1,), epoch, dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self._resume: State | None = None
        self._run: _Run | None = None
        # Shared memory as well: workers write their counters, stats() sums them.
        self._stats = StatsTable()

    # ----------------------------------------------------------- building
    def _derive(self, **changes: Any) -> Pipeline:
        settings: dict[str, Any] = {
            "source": self._source, "stages": self._stages, "seed": self._seed,
            "topology": self._topology, "epoch": self.epoch, "balance": self._balance,
        }
        settings.update(changes)
        return Pipeline(settings.pop("source"), settings.pop("stages"), **settings)

    def _then(self, stage: Stage) -> Pipeline:
        return self._derive(stages=(*self._stages, stage))

    def _with_source(self, source: Source) -> Pipeline:
        return self._derive(source=source)

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

    def batch(self, batch_size: int, drop_last: bool = False, *, unique: bool | Unique = False) -> Pipeline:
        """Group consecutive elements into lists of ``batch_size``.

        ``unique=True`` (or a :class:`~torchseq.unique.Unique`) keeps every batch
        free of repeated texts, for in-batch negatives (see :mod:`torchseq.unique`).
        """
        return self._then(Batch(batch_size, drop_last, unique=as_unique(unique)))

    def bucket(
        self,
        batch_size: int,
        *,
        pool_batches: int = 64,
        seed: int = 0,
        drop_last: bool = False,
        unique: bool | Unique = False,
    ) -> Pipeline:
        """Length-bucketed batches: sort a pool of ``batch_size * pool_batches`` by length, cut, shuffle.

        ``unique`` as in :meth:`batch`.
        """
        return self._then(BucketBatch(batch_size, pool_batches, seed, drop_last, unique=as_unique(unique)))

    def batch_by_tokens(
        self,
        max_tokens: int,
        *,
        pool_size: int | None = None,
        max_batch_size: int | None = None,
        seed: int = 0,
        max_record_tokens: int | None = None,
        unique: bool | Unique = False,
    ) -> Pipeline:
        """Batches whose padded token count over all text columns stays within ``max_tokens``.

        Args:
            pool_size: records sorted at a time; default ``max(4096, max_tokens)``.
            max_record_tokens: bound on one record's padded tokens summed over
                its columns, used to plan equal batch counts per rank under
                DDP; default ``max_length`` x the tokenized text fields other
                than negatives (records with ``K`` negatives need
                ``(2 + K) * max_length``).
            unique: as in :meth:`batch`.
        """
        if max_record_tokens is None:
            tokenizer_stage = next((s for s in reversed(self._stages) if isinstance(s, Tokenize)), None)
            if tokenizer_stage is not None:
                columns = sum(1 for f in tokenizer_stage.fields if f != "negatives") or 1
                max_record_tokens = tokenizer_stage.max_length * columns
        return self._then(TokenBudgetBatch(max_tokens, pool_size, max_batch_size, seed,
                                           max_record_tokens=max_record_tokens, unique=as_unique(unique)))

    def sample_pairs(self, num_negatives: int | None = None, *, swap: bool = False, seed: int = 0) -> Pipeline:
        """Draw a fresh pair from rich records every epoch (see :class:`~torchseq.sampling.SamplePairs`).

        ``{"set": [...]}`` records get two distinct texts of the set; records
        with several ``positives`` one of them; ``num_negatives`` negatives are
        drawn from the record's negatives (``None`` keeps them all, ``0``
        drops them); ``swap=True`` swaps anchor and positive half the time.
        Seeded from ``(seed, epoch, record)``: deterministic whatever the
        workers, and resumable.
        """
        return self._then(SamplePairs(num_negatives, swap, seed))

    def collate(self, pad_to_multiple_of: int | None = None, pad_id: int | None = None) -> Pipeline:
        """Pad batches into tensors (layout in :mod:`torchseq.collate`)."""
        pad_source: Any = next((s for s in reversed(self._stages) if isinstance(s, Tokenize)), None)
        if pad_source is None and hasattr(self._source, "resolved_pad_id"):
            pad_source = self._source  # pre-tokenized shards record their pad id
        return self._then(Collate(pad_to_multiple_of, pad_id, pad_source))

    def with_topology(self, rank: int, world_size: int) -> Pipeline:
        """Fix rank and world size instead of detecting them (tests, custom launchers)."""
        return self._derive(topology=Topology(rank, world_size))

    def balance(self, policy: str = "partial") -> Pipeline:
        """Choose how every rank gets the same number of batches per epoch.

        Ranks split each epoch's records from the per-shard record counts
        (:mod:`torchseq.index`, counted once and cached), so all ranks yield
        the same number of batches and DDP never waits on a rank that ran dry.

        Args:
            policy: what happens to the records that do not fill a last step
                on every rank (``N`` records, ``W`` ranks, batch size ``B``):

                * ``"partial"`` (default): every record exactly once; each
                  rank's last batch may be short (repeats fewer than ``W``
                  records only if fewer than ``W`` are left for that step);
                * ``"drop"``: full batches; fewer than ``W * B`` records of
                  the epoch are left out;
                * ``"pad"``: full batches; fewer than ``W * B`` records are
                  repeated from the start of the epoch;
                * ``"wrap"``: full batches; the rest opens the next epoch,
                  nothing is lost or repeated over a run;
                * ``"off"``: no counts; shards are dealt to workers as they
                  come and ranks may get different numbers of batches.
        """
        return self._derive(balance=check_policy(policy))

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
        return self.iterate(self.context())

    def iterate(self, ctx: Context) -> Iterator[Any]:
        """Run as the worker ``ctx`` describes (tests and simulations; ``iter`` uses :meth:`context`)."""
        resume, self._resume = self._resume, None
        stage_states: list[State] = [{}] * (len(self._stages) + 1)
        guard_state: State = {}
        if resume:
            ctx = self._check_resume(resume, ctx)
            stage_states = resume["stages"]
            guard_state = resume.get("guard") or {}
        plan = self._epoch_plan(ctx, needed=ctx.num_global_workers > 1 or self._balance != "partial")
        if plan is not None:
            ctx = dataclasses.replace(ctx, share=plan.share(ctx.rank, ctx.worker, ctx.num_workers))
        if resume:
            self._check_plan(resume.get("plan"), ctx)
        stats = self._stats.writer(ctx.worker)
        ctx = dataclasses.replace(ctx, stats=stats)
        slots = [Slot(s) for s in stage_states]
        guard = Slot(guard_state)
        self._run = _Run(ctx, slots, guard)
        iterator = self._chain(ctx, slots)
        if ctx.share is not None and ctx.share.guard:
            # Repeats, if ever needed, come from a fresh run of this worker's epoch.
            restart = lambda: self._chain(ctx, [Slot() for _ in slots])  # noqa: E731
            iterator = StepGuard()(iterator, ctx.share.num_batches, guard, restart, ctx.where())
        return stats.observe(iterator)

    def _chain(self, ctx: Context, slots: list[Slot]) -> Iterator[Any]:
        iterator = self._source(ctx, slots[0])
        for stage, slot in zip(self._stages, slots[1:], strict=True):
            iterator = stage(iterator, ctx, slot)
        return iterator

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

    def _epoch_plan(self, ctx: Context, needed: bool = True) -> EpochPlan | None:
        """The balance plan of ``ctx.epoch``; ``None`` when off or not ``needed``.

        A single worker under ``"partial"`` reads every shard in order anyway,
        so it skips counting: the stream is the same either way.
        """
        if not needed:
            return None
        return plan_epoch(self._source, self._stages, self._balance, ctx)

    def _check_plan(self, saved: Any, ctx: Context) -> None:
        now = _plan_state(ctx)
        if not saved or now is None:
            check_field("balance", saved.get("policy") if saved else None, now and now["policy"])
            return
        for key in ("policy", "num_records", "quantum"):
            check_field(key, saved.get(key), now[key])

    def stream(self, ctx: Context, state: State | None = None) -> tuple[Iterator[Any], Callable[[], State]]:
        """Run inside another pipeline's iteration, as a source of :func:`torchseq.mix`.

        Does what :meth:`iterate` does for the worker ``ctx`` describes -- this
        pipeline's own balance plan, and the step guard under DDP -- but
        leaves ``self`` untouched: the state to resume from comes in, a
        function that snapshots the live state comes out.
        """
        state = state or {}
        ctx = dataclasses.replace(ctx, share=None)
        plan = self._epoch_plan(ctx, needed=ctx.num_global_workers > 1 or self._balance != "partial")
        if plan is not None:
            ctx = dataclasses.replace(ctx, share=plan.share(ctx.rank, ctx.worker, ctx.num_workers))
        if state:
            check_field("stages", state.get("graph"), self._graph())
            self._check_plan(state.get("plan"), ctx)
        slots = [Slot(s) for s in state.get("stages") or [{}] * (len(self._stages) + 1)]
        guard = Slot(state.get("guard") or {})
        iterator = self._chain(ctx, slots)
        if ctx.share is not None and ctx.share.guard:
            restart = lambda: self._chain(ctx, [Slot() for _ in slots])  # noqa: E731
            iterator = StepGuard()(iterator, ctx.share.num_batches, guard, restart, ctx.where())

        def snapshot() -> State:
            return {
                "graph": self._graph(),
                "plan": _plan_state(ctx),
                "stages": [slot.snapshot() for slot in slots],
                "guard": guard.snapshot(),
            }

        return iterator, snapshot

    @property
    def source(self) -> Source:
        """The pipeline's source (a reader, or a mixture of pipelines)."""
        return self._source

    def _check_resume(self, resume: State, ctx: Context) -> Context:
        check_field("version", resume.get("version"), STATE_VERSION)
        check_field("stages", resume.get("graph"), self._graph())
        check_field("world_size", resume.get("world_size"), ctx.world_size)
        check_field("rank", resume.get("rank"), ctx.rank)
        check_field("num_workers", resume.get("num_workers"), ctx.num_workers)
        check_field("worker", resume.get("worker"), ctx.worker)
        check_field("seed", resume.get("seed"), ctx.seed)
        return dataclasses.replace(ctx, epoch=int(resume["epoch"]))

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
        plan = self._epoch_plan(ctx)
        if plan is None:
            raise ConfigError("balance_report: the pipeline is not balanced (policy 'off' or no shard source)")
        return plan.report()

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
            "plan": _plan_state(ctx),
            "stages": [slot.snapshot() for slot in run.slots],
            "guard": run.guard.snapshot(),
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
        lines = [f"Pipeline(seed={self._seed}, epoch={self.epoch}, balance={self._balance!r})",
                 f"  {self._source!r}"]
        lines += [f"  -> {stage!r}" for stage in self._stages]
        return "\n".join(lines)


def _plan_state(ctx: Context) -> dict[str, Any] | None:
    share = ctx.share
    if share is None:
        return None
    return {"policy": share.policy, "num_records": share.epoch_records, "quantum": share.quantum}


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

"""The Pipeline: an immutable description -- a source plus an ordered list of stages.

Each fluent method is a one-line builder that appends a stage object (logic
lives in the stage classes). Nothing is opened until iteration, which happens
inside each DataLoader worker: ``__iter__`` reads the context once (topology,
worker, epoch, seed) and hands it to a :class:`~torchseq.pipeline.run.Run`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch.utils.data import IterableDataset

from torchseq.batching import Batch, BucketBatch, Collate, TokenBudgetBatch, Unique, as_unique
from torchseq.context import Context, Topology
from torchseq.errors import ConfigError
from torchseq.pipeline import checkpoint, loading
from torchseq.pipeline.placement import current_context, distributed_topology
from torchseq.pipeline.planning import batches_per_rank, epoch_plan
from torchseq.pipeline.run import Run
from torchseq.pipeline.shared import SharedCell
from torchseq.pipeline.stats import PipelineStats
from torchseq.plan import check_policy
from torchseq.records import TEXT_FIELDS
from torchseq.sources.base import ShardSource
from torchseq.stages import BufferShuffle, Filter, Map, SamplePairs, Tokenize, tokenizer_spec
from torchseq.state import State


class Pipeline(IterableDataset[Any]):
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

    def _last(self, kind: type[Any]) -> Any:
        return next((s for s in reversed(self._stages) if isinstance(s, kind)), None)

    # ----------------------------------------------------------- builders
    def then(self, stage: Any) -> Pipeline:
        """Append a stage of your own: an object whose ``open(upstream, ctx, state)`` returns a
        :class:`torchseq.protocol.Running` (the stage protocol; see the architecture page of the docs).

        Raises:
            ConfigError: ``stage`` has no ``open`` method.
        """
        if not callable(getattr(stage, "open", None)):
            raise ConfigError(
                f"then: {type(stage).__name__} is not a stage; a stage has open(upstream, ctx, state) "
                "returning a torchseq.protocol.Running"
            )
        return self._then(stage)

    def shuffle(self, buffer_size: int = 10_000, seed: int = 0) -> Pipeline:
        """Shuffle the shard order and, within a rolling buffer, the records.

        Seeded from ``(seed, epoch, rank, worker)``: the same seed gives the
        same order; :meth:`set_epoch` reshuffles.
        """
        if self._stages:
            raise ConfigError("shuffle() must come right after the reader (it also shuffles shard order)")
        source = self._source
        if isinstance(source, ShardSource):
            source = dataclasses.replace(source, shuffle_seed=seed)
        return self._derive(source=source)._then(BufferShuffle(buffer_size, seed))

    def tokenize(
        self,
        tokenizer: Any,
        max_length: int = 128,
        fields: tuple[str, ...] | list[str] | None = None,
        *,
        chunk_size: int = 64,
        pad_id: int | None = None,
    ) -> Pipeline:
        """Tokenize text fields inside the workers.

        Args:
            tokenizer: a ``tokenizer.json`` path, a ``tokenizers.Tokenizer``, a
                ``transformers`` fast tokenizer, or a callable mapping a list of
                texts to a list of id lists.
            max_length: truncate every text to this many tokens (special tokens included).
            fields: text fields to tokenize; default anchor, positive, negatives.
            chunk_size: records encoded per call of the tokenizer.
            pad_id: the id :meth:`collate` pads with; default the tokenizer's.
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

        ``unique=True`` (or a :class:`~torchseq.Unique`) keeps every batch free
        of repeated texts, for in-batch negatives.
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
            max_batch_size: at most this many records per batch.
            seed: seeds the order of the batches cut from each pool.
            max_record_tokens: bound on one record's padded tokens summed over
                its columns, used to plan equal batch counts per rank under
                DDP; default ``max_length`` x the tokenized text fields other
                than negatives (records with ``K`` negatives need
                ``(2 + K) * max_length``).
            unique: as in :meth:`batch`.
        """
        tokenizer = self._last(Tokenize)
        if max_record_tokens is None and tokenizer is not None:
            columns = sum(1 for f in tokenizer.fields if f != "negatives") or 1
            max_record_tokens = tokenizer.max_length * columns
        return self._then(TokenBudgetBatch(max_tokens, pool_size, max_batch_size, seed,
                                           max_record_tokens=max_record_tokens, unique=as_unique(unique)))

    def sample_pairs(self, num_negatives: int | None = None, *, swap: bool = False, seed: int = 0) -> Pipeline:
        """Draw a fresh pair from rich records every epoch.

        ``{"set": [...]}`` records get two distinct texts of the set; records
        with several ``positives`` one of them; ``num_negatives`` negatives are
        drawn from the record's negatives (``None`` keeps them all, ``0``
        drops them); ``swap=True`` swaps anchor and positive half the time.
        Seeded from ``(seed, epoch, record)``: deterministic whatever the
        workers, and resumable.
        """
        return self._then(SamplePairs(num_negatives, swap, seed))

    def collate(self, pad_to_multiple_of: int | None = None, pad_id: int | None = None) -> Pipeline:
        """Pad batches into tensors: ``{column: {"input_ids", "attention_mask"}}`` LongTensors.

        ``pad_id=None`` pads with the pipeline's tokenizer's pad id, or the one
        ``torchseq pretokenize`` recorded beside pre-tokenized shards (0 without either).
        """
        tokenizer = self._last(Tokenize)
        pad_id_of = None
        if pad_id is None and tokenizer is not None:
            pad_id = tokenizer.resolved_pad_id()
        elif pad_id is None and hasattr(self._source, "resolved_pad_id"):
            pad_id_of = self._source.resolved_pad_id  # read beside the shards, in the worker
        return self._then(Collate(pad_to_multiple_of, pad_id, pad_id_of))

    def with_topology(self, rank: int, world_size: int) -> Pipeline:
        """Fix rank and world size instead of detecting them (tests, custom launchers)."""
        return self._derive(topology=Topology(rank, world_size))

    def balance(self, policy: str = "partial") -> Pipeline:
        """Choose how every rank gets the same number of batches per epoch.

        Ranks split each epoch's records from the per-shard record counts
        (counted once and cached), so all ranks yield the same number of
        batches and DDP never waits on a rank that ran dry.

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

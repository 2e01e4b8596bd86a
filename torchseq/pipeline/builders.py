"""The fluent builders of a :class:`~torchseq.Pipeline`: each appends one stage object or changes one setting.

Logic lives in the stage classes; a builder only checks its arguments and
calls ``_then`` / ``_derive``, which :class:`~torchseq.pipeline.core.Pipeline` defines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from torchseq.batching import Batch, BucketBatch, Collate, TokenBudgetBatch, Unique, as_unique
from torchseq.context import Topology
from torchseq.errors import ConfigError
from torchseq.plan import check_policy
from torchseq.records import TEXT_FIELDS
from torchseq.sources.base import ShardSource
from torchseq.stages import BufferShuffle, Filter, Map, SamplePairs, Tokenize, tokenizer_spec

P = TypeVar("P", bound="Builders")


class Builders:
    """The fluent methods; mixed into :class:`~torchseq.Pipeline`."""

    _source: Any
    _stages: tuple[Any, ...]

    def _derive(self: P, **changes: Any) -> P:
        raise NotImplementedError

    def _then(self: P, stage: Any) -> P:
        raise NotImplementedError

    def _last(self, kind: type[Any]) -> Any:
        return next((s for s in reversed(self._stages) if isinstance(s, kind)), None)

    def then(self: P, stage: Any) -> P:
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

    def shuffle(self: P, buffer_size: int = 10_000, seed: int = 0) -> P:
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

    def tokenize(self: P,
        tokenizer: Any,
        max_length: int = 128,
        fields: tuple[str, ...] | list[str] | None = None,
        *,
        chunk_size: int = 64,
        pad_id: int | None = None,
    ) -> P:
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

    def map(self: P, fn: Callable[[Any], Any]) -> P:
        """Apply ``fn`` to each element."""
        return self._then(Map(fn))

    def filter(self: P, fn: Callable[[Any], bool]) -> P:
        """Keep elements for which ``fn`` returns true."""
        return self._then(Filter(fn))

    def batch(self: P, batch_size: int, drop_last: bool = False, *, unique: bool | Unique = False) -> P:
        """Group consecutive elements into lists of ``batch_size``.

        ``unique=True`` (or a :class:`~torchseq.Unique`) keeps every batch free
        of repeated texts, for in-batch negatives.
        """
        return self._then(Batch(batch_size, drop_last, unique=as_unique(unique)))

    def bucket(self: P,
        batch_size: int,
        *,
        pool_batches: int = 64,
        seed: int = 0,
        drop_last: bool = False,
        unique: bool | Unique = False,
    ) -> P:
        """Length-bucketed batches: sort a pool of ``batch_size * pool_batches`` by length, cut, shuffle.

        ``unique`` as in :meth:`batch`.
        """
        return self._then(BucketBatch(batch_size, pool_batches, seed, drop_last, unique=as_unique(unique)))

    def batch_by_tokens(self: P,
        max_tokens: int,
        *,
        pool_size: int | None = None,
        max_batch_size: int | None = None,
        seed: int = 0,
        max_record_tokens: int | None = None,
        unique: bool | Unique = False,
    ) -> P:
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

    def sample_pairs(self: P, num_negatives: int | None = None, *, swap: bool = False, seed: int = 0) -> P:
        """Draw a fresh pair from rich records every epoch.

        ``{"set": [...]}`` records get two distinct texts of the set; records
        with several ``positives`` one of them; ``num_negatives`` negatives are
        drawn from the record's negatives (``None`` keeps them all, ``0``
        drops them); ``swap=True`` swaps anchor and positive half the time.
        Seeded from ``(seed, epoch, record)``: deterministic whatever the
        workers, and resumable.
        """
        return self._then(SamplePairs(num_negatives, swap, seed))

    def collate(self: P, pad_to_multiple_of: int | None = None, pad_id: int | None = None) -> P:
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

    def with_topology(self: P, rank: int, world_size: int) -> P:
        """Fix rank and world size instead of detecting them (tests, custom launchers)."""
        return self._derive(topology=Topology(rank, world_size))

    def balance(self: P, policy: str = "partial") -> P:
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

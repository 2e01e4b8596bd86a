"""The shard-reading loop shared by every file format.

A format says how to iterate the items of one shard (lines, tar samples) and
how to decode one item into a record; this loop does sharding, resume, the
error policy and the reading counters once for all of them.

Faults come at two levels:

* an *item* (line, tar sample) that does not decode: ``decode`` raises
  :class:`~torchseq.records.RecordFormatError` (or a ``DataError``); the item
  is skipped or raised per ``on_error``;
* a *shard* that cannot be read on (missing, not decompressible, truncated,
  unknown format, remote store failing): ``items`` raises
  :class:`ShardFault`; the rest of that shard is lost and the loop goes on
  with the next one per ``on_error``. The items before the fault were
  delivered.

When workers split a shard by record (fewer shards than workers), every
worker reads every shard; exactly one of them (the one that owns the shard's
position) reports each shard-level fault, so counts summed over workers are
exact.
"""

from __future__ import annotations

import errno
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import (
    CorruptShardError,
    ErrorPolicy,
    ShardReadError,
    StateError,
    TorchseqError,
    data_error,
    located,
)
from torchseq.plan import WorkerPlan, assign_shards, check_plan_shards
from torchseq.protocol import Counters, Running
from torchseq.records import Record, RecordFormatError
from torchseq.sources.fs import PIPE_PREFIX, check_pipe
from torchseq.sources.identity import check_shard_list, shard_stamps
from torchseq.sources.index_check import IndexCheck
from torchseq.sources.jsontext import decode_json as decode_json  # re-exported for torchseq.tools
from torchseq.sources.options import ReaderOptions
from torchseq.sources.spec import ShardSpec, expand_spec, spec_items
from torchseq.state import Saved, State, check_field

#: Skipped inputs reported per worker through ``Pipeline.stats()`` (counts stay exact).
STATS_ERRORS_PER_WORKER = 16


class ShardFault(Exception):
    """Internal: raised by ``items`` when the rest of a shard cannot be read.

    Wraps the :class:`~torchseq.errors.TorchseqError` to report, and its place
    (the error's own, else the shard). A separate class, so that errors the
    policy raises while the shard is being read (``on_error="raise"``, too
    many errors) are never mistaken for one.
    """

    def __init__(self, error: TorchseqError, shard: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.place = error.place or shard


def lost_rest(shard: str, place: str, what: str, exc: BaseException, before: str) -> ShardFault:
    """The fault of a shard unreadable past ``place``: ``before`` (e.g. "the 3 line(s) before") were read.

    An ``OSError`` with an errno is the operating system failing to read (``EIO``
    from a disk, ``ESTALE`` from an NFS mount): a :class:`ShardReadError`, not
    corrupt content (decompressors raise errno-less ``OSError`` subclasses).
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        return ShardFault(located(
            ShardReadError, place,
            f"read error ({code}: {exc.strerror}); {before} were read, the rest of the shard is lost: "
            "the storage failed, not necessarily the shard: check the disk or mount and read it again",
        ), shard)
    return ShardFault(located(
        CorruptShardError, place,
        f"{what} ({type(exc).__name__}: {exc}); {before} were read, the rest of the shard is lost: "
        "re-write or re-download the shard",
    ), shard)


def _owned(counter: int, stride: int, offset: int) -> int:
    """How many of the item positions ``0 .. counter-1`` this worker owns."""
    return max(0, (counter - offset + stride - 1) // stride)


@dataclass(frozen=True)
class ShardSource(ABC):
    """Base of the file sources. Subclasses implement ``items`` and ``decode``.

    Attributes:
        spec: the shard spec (paths, URLs, globs, brace ranges).
        options: how to read (:class:`~torchseq.sources.options.ReaderOptions`).
        shuffle_seed: shuffles the shard order per epoch when set.

    State (see :class:`_Reading`): ``range`` (position in this worker's list
    of shard ranges), ``index`` (position reached in that shard, as
    :meth:`items` counts), ``ordinal`` (items read from that shard, for ranges
    that start or end inside it), ``counter`` (items kept across shards, for
    the record-level split), ``num_shards``, and ``read``: the ``[shard,
    first, end]`` item ranges of the epoch's record order this worker has
    consumed so far (``end`` ``None``: to the end of the shard), of which it
    keeps the items whose running index ``% stride == offset`` (a split by
    record; ``stride`` 1 otherwise); ``shards``: the shard list, in order,
    each with the stamp of its version (:mod:`torchseq.sources.identity`),
    as one JSON string (cheap to snapshot every step).

    On resume the shard list must be the same, and a position inside a shard
    is checked against the shard: it is read up to that position once more,
    which must hold exactly ``ordinal`` items, the last at ``index``.
    """

    spec: ShardSpec
    options: ReaderOptions = ReaderOptions()
    shuffle_seed: int | None = None

    @classmethod
    def create(cls, spec: ShardSpec, **options: Any) -> ShardSource:
        """Validate the spec and reader options (without touching any shard) and build the source.

        Raises:
            ConfigError: an option is invalid, the spec is empty, or it holds a
                ``pipe:`` command without ``allow_pipe=True``.
        """
        opts = ReaderOptions.create(**options)
        for item in spec_items(spec):
            if item.startswith(PIPE_PREFIX):
                check_pipe(item, opts.allow_pipe)
        return cls(spec, opts)

    @property
    def on_error(self) -> str:
        return self.options.on_error

    def shard_list(self) -> list[str]:
        return expand_spec(self.spec, self.options.storage_options, self.options.retry)

    def label(self) -> str:
        """The name of this source in statistics: ``name``, else format and first spec item."""
        if self.options.name is not None:
            return self.options.name
        items = spec_items(self.spec)
        more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
        return f"{type(self).__name__.removesuffix('Source').lower()}:{items[0]}{more}"

    @abstractmethod
    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, item)`` for the items of one shard after the first ``skip``.

        ``index`` counts from 1 and includes skipped and blank items, so it is
        a stable position in the shard.

        Raises:
            ShardFault: the shard (or the rest of it) cannot be read.
        """

    @abstractmethod
    def decode(self, path: str, index: int, item: Any) -> Record:
        """Turn one item into a record or raise :class:`RecordFormatError`."""

    def place(self, path: str, index: int, item: Any) -> str:
        return f"{path}:{index}"

    def settings(self) -> dict[str, Any]:
        """What shapes the records read (checked on resume): field mapping, size limit, shard shuffle."""
        options = self.options
        return {"fields": dict(options.fields) if options.fields else None,
                "max_record_bytes": options.max_record_bytes, "shuffle_seed": self.shuffle_seed}

    def open(self, ctx: Context, state: State) -> Running:
        shards = self.shard_list()
        if state:
            check_field("num_shards", state.get("num_shards"), len(shards))
        if ctx.plan is not None:
            check_plan_shards(ctx.plan, len(shards))
            plan = ctx.plan
        else:
            plan = assign_shards(len(shards), ctx, self.shuffle_seed)
        # Balanced plans give empty shards to no one: one worker looks at them.
        probe = plan.empty_shards if plan.balanced and ctx.global_worker == 0 else ()
        return _Reading(self, shards, plan, state, probe, ctx.epoch)


class _Reading(Running):
    """A shard source at work: the reading loop, its cursor and its counters."""

    __slots__ = ("source", "shards", "plan", "identity", "range", "index", "ordinal", "counter", "first_counter",
                 "policy", "bad", "empty", "check", "label")

    def __init__(
        self, source: ShardSource, shards: list[str], plan: WorkerPlan, state: State, probe: tuple[int, ...],
        epoch: int,
    ) -> None:
        self.source = source
        self.shards = shards
        self.plan = plan
        self.identity: str | None = None  # the shard list with stamps, taken when first needed
        self.range = 0  # position in plan.ranges
        self.index = 0  # index reached in that shard
        self.ordinal = 0  # items read in that shard
        self.counter = 0  # items kept overall (record-level split)
        if state:
            self._resume(Saved(state), epoch)
        self.first_counter = self.counter
        options = source.options
        self.policy = ErrorPolicy(options.on_error, options.max_errors, options.max_error_rate)
        self.bad = 0  # items this run owned that did not decode
        self.empty = 0  # shards that held no items
        self.check = IndexCheck(source, plan, ShardFault)  # a shard that holds another count than planned
        self.label = source.label()
        self.iterator = self._records(probe)

    def state_dict(self) -> State:
        return {
            "range": self.range,
            "index": self.index,
            "ordinal": self.ordinal,
            "counter": self.counter,
            "num_shards": len(self.shards),
            "read": self.read_ranges(),
            "stride": self.plan.stride,
            "offset": self.plan.offset,
            "skipped": dict(self.policy.counts),
            "shards": self.shard_identity(),
        }

    def shard_identity(self) -> str:
        """``[[path, stamp], ...]`` of the shard list as JSON, taken once per run."""
        if self.identity is None:
            stamps = shard_stamps(self.shards, self.source.options)
            self.identity = json.dumps([list(pair) for pair in zip(self.shards, stamps, strict=True)])
        return self.identity

    def _resume(self, saved: Saved, epoch: int) -> None:
        """Take the cursor from a checkpoint, checking every field against the plan and the shards.

        The plan's order comes from the checkpoint's epoch: a cursor that does not fit it names that epoch.
        """
        plan, ranges = self.plan, self.plan.ranges
        check_shard_list(saved.get("shards", "the shard list"), self.shard_identity())
        check_field("stride", saved.get("stride"), plan.stride)
        check_field("offset", saved.get("offset"), plan.offset)
        saved.counts("skipped")
        self.range = saved.value.get("range", -1)
        if type(self.range) is not int or not 0 <= self.range <= len(ranges):
            raise saved.wrong("range", f"an int in [0, {len(ranges)}] (the ranges in epoch {epoch}'s shard order)")
        self.index = saved.integer("index", 0)
        self.ordinal = saved.integer("ordinal", 0)
        self.counter = saved.integer("counter", 0)
        # A checkpoint stands before the first item, just after an item this worker kept, or at the end.
        done = self.range == len(ranges)
        if done or self.index == 0:
            check_field("index", self.index, 0)
            check_field("ordinal", self.ordinal, 0)
            if not done and (self.range or self.counter):
                raise saved.wrong("range", f"0 (with counter 0) or {len(ranges)} at index 0")
        else:
            _, start, end = ranges[self.range]
            saved.integer("ordinal", start + 1, min(self.index, end) if end is not None else self.index)
            if plan.stride > 1 and (self.counter - 1) % plan.stride != plan.offset:
                raise saved.wrong("counter", f"an item this worker keeps (counter % {plan.stride} == "
                                             f"{(plan.offset + 1) % plan.stride})")
        check_field("read", saved.get("read"), self.read_ranges(),
                    f" (the reads in epoch {epoch}'s shard order: is the checkpoint's epoch right?)")
        if not done and self.index:
            self._check_position(epoch)

    def _check_position(self, epoch: int) -> None:
        """The shard holds exactly ``ordinal`` items up to the checkpoint's ``index``, the last at ``index``."""
        path = self.shards[self.plan.ranges[self.range][0]]
        count = last = 0
        items = self.source.items(path, 0)
        try:
            for position, _ in items:
                if position > self.index:
                    break
                count, last = count + 1, position
        except ShardFault:
            return  # the shard cannot be read (now): the reading loop reports it as usual
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        if last != self.index:
            raise StateError(f"index: checkpoint has {self.index}, but {path} has no item there (its items "
                             f"up to there end at {last}, in epoch {epoch}'s shard order); the checkpoint was modified "
                             "or the shard changed")
        if count != self.ordinal:
            raise StateError(f"ordinal: checkpoint has {self.ordinal} items up to position {self.index} of "
                             f"{path}, the shard has {count} (in epoch {epoch}'s shard order); the checkpoint was "
                             "modified or the shard changed")

    def read_ranges(self) -> list[list[int | None]]:
        """The item ranges of the epoch's order consumed so far (whole ranges, then the current one)."""
        ranges = self.plan.ranges
        out: list[list[int | None]] = [[s, b, e] for s, b, e in ranges[: self.range]]
        if self.range < len(ranges) and self.ordinal > ranges[self.range][1]:
            shard, first, _ = ranges[self.range]
            out.append([shard, first, self.ordinal])
        return out

    def counters(self) -> Counters:
        stride, offset = self.plan.stride, self.plan.offset
        records = _owned(self.counter, stride, offset) - _owned(self.first_counter, stride, offset) - self.bad
        policy = self.policy
        return {
            "records": records,
            "empty_shards": self.empty, **self.check.counters(),
            "skipped": dict(policy.counts),
            "errors": [[e.place, e.reason, e.message[:200]] for e in policy.errors[:STATS_ERRORS_PER_WORKER]],
            "sources": {self.label: records},
        }

    def _inputs(self) -> int:
        stride, offset = self.plan.stride, self.plan.offset
        return _owned(self.counter, stride, offset) - _owned(self.first_counter, stride, offset)

    def _records(self, probe: tuple[int, ...]) -> Iterator[Record]:
        source, shards, policy = self.source, self.shards, self.policy
        decode, items = source.decode, source.items
        plan = self.plan
        stride, offset, ranges = plan.stride, plan.offset, plan.ranges
        path = ""
        if probe:
            self._probe(probe)
        while self.range < len(ranges):
            position = self.range
            shard, start, end = ranges[position]
            path = shards[shard]
            try:
                for index, item in items(path, self.index):
                    ordinal = self.ordinal
                    if end is not None and ordinal >= end:
                        self.check.past(shard, path, end)
                        break  # a balanced share may end inside a shard
                    self.index = index
                    self.ordinal = ordinal + 1
                    if ordinal < start:
                        continue  # ... or begin inside one
                    seen = self.counter
                    self.counter = seen + 1
                    if seen % stride != offset:
                        continue
                    try:
                        record = decode(path, index, item)
                    except RecordFormatError as exc:
                        self.bad += 1
                        where = exc.place or source.place(path, index, item)
                        policy.handle(data_error(where, str(exc), exc.reason), where, self._inputs())
                        continue
                    except TorchseqError as exc:
                        self.bad += 1
                        policy.handle(exc, source.place(path, index, item), self._inputs())
                        continue
                    yield record
                self.check.short(shard, path, start, end, self.ordinal)
                if self.ordinal == 0 and start == 0 and end != 0 and position % stride == offset:
                    self.empty += 1  # a valid shard without records: not an error, but counted
            except ShardFault as fault:
                # Workers that share this shard (by record, or by item range) all
                # meet the fault: the one whose range holds its position reports
                # it. A fault ends the count of a shard, so it sits at the end of
                # the shard's last range, whose reader meets it on its last pull.
                at = self.ordinal
                if start <= at and (end is None or at <= end) and position % stride == offset:
                    policy.handle(fault.error, fault.place, self._inputs())
            self.range += 1
            self.index = 0
            self.ordinal = 0
        policy.finish(path or "(no shards)", self._inputs())

    def _probe(self, empty: tuple[int, ...]) -> None:
        """Open the shards a balanced plan gave to no one (they counted 0 items).

        Each is either validly empty (counted), broken (a missing file, not
        decompressible, not the format: its fault is reported here, once per
        epoch, as reading it would have), or not empty after all (reported).
        """
        for shard in empty:
            try:
                for _ in self.source.items(self.shards[shard], 0):
                    self.check.past(shard, self.shards[shard], 0)  # counted 0 items a moment ago
                    break
                else:
                    self.empty += 1
            except ShardFault as fault:
                self.policy.handle(fault.error, fault.place, 0)

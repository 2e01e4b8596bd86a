"""The shard-reading loop shared by every file format.

A format says how to iterate the items of one shard (lines, tar samples) and
how to decode one item into a record; this loop does sharding, resume, the
error policy and the reading statistics once for all of them.

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

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import (
    ConfigError,
    ErrorPolicy,
    OnError,
    TorchseqError,
    check_on_error,
    check_tolerance,
    data_error,
)
from torchseq.records import Record, RecordFormatError, check_fields
from torchseq.sharding import Assignment, assignment_for
from torchseq.sources.fs import PIPE_PREFIX, ShardOpener, check_pipe
from torchseq.sources.remote import RetryPolicy
from torchseq.sources.spec import ShardSpec, expand_spec, spec_items
from torchseq.state import Slot, check_field

try:  # orjson parses pair lines ~2x faster; the stdlib is the fallback.
    import orjson

    loads: Callable[[bytes | str], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads

DEFAULT_MAX_RECORD_BYTES = 64 << 20
#: Skipped inputs reported per worker through ``Pipeline.stats()`` (counts stay exact).
STATS_ERRORS_PER_WORKER = 16


def decode_json(raw: bytes) -> Any:
    """Parse JSON bytes; the error says whether the bytes or the JSON were bad."""
    try:
        return loads(raw)
    except RecursionError:  # the stdlib parser on deeply nested input
        raise RecordFormatError("invalid JSON (nested too deeply)", "invalid json") from None
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise RecordFormatError(f"invalid UTF-8 at byte {bad.start}", "invalid utf-8") from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordFormatError(f"invalid JSON ({detail[:200]})", "invalid json") from None


class ShardFault(Exception):
    """Internal: raised by ``items`` when the rest of a shard cannot be read.

    Wraps the :class:`~torchseq.errors.TorchseqError` to report. A separate
    class, so that errors the policy raises while the shard is being read
    (``on_error="raise"``, too many errors) are never mistaken for one.
    """

    def __init__(self, error: TorchseqError, place: str) -> None:
        super().__init__(str(error))
        self.error = error
        # Messages start with their place; keep the precise one (path:line, shard::member).
        message = str(error)
        self.place = message.split(": ", 1)[0] if message.startswith(place) else place


def _owned(counter: int, stride: int, offset: int) -> int:
    """How many of the item positions ``0 .. counter-1`` this worker owns."""
    return max(0, (counter - offset + stride - 1) // stride)


@dataclass(frozen=True)
class ShardSource:
    """Base of the file sources. Subclasses implement ``items`` and ``decode``.

    Attributes:
        spec: the shard spec (paths, URLs, globs, brace ranges).
        fields: a key mapping for dicts of no known format.
        on_error: ``"raise"``, ``"skip"`` or ``"warn"``.
        shuffle_seed: shuffles the shard order per epoch when set.
        max_record_bytes: a longer line / tar sample is bad input (and is
            never read into memory whole).
        max_errors: stop when a worker skipped more inputs than this.
        max_error_rate: stop when a worker skipped more than this fraction.
        opener: how shards are opened (fsspec options, retries, ``pipe:``).
        name: label of this source in ``Pipeline.stats().sources``.

    State: ``shard`` (position in this worker's list of shard ranges),
    ``index`` (position reached in that shard, as :meth:`items` counts),
    ``ordinal`` (items read from that shard, for ranges that start or end
    inside it), ``counter`` (items kept across shards, for the record-level
    split), ``num_shards``.
    """

    spec: ShardSpec
    fields: Mapping[str, str] | None = None
    on_error: OnError = "raise"
    shuffle_seed: int | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_errors: int | None = None
    max_error_rate: float | None = None
    opener: ShardOpener = ShardOpener()
    name: str | None = None

    @classmethod
    def create(
        cls,
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
    ) -> ShardSource:
        """Validate reader arguments (without touching any shard) and build the source.

        Raises:
            ConfigError: an argument is invalid, the spec is empty, or it holds a
                ``pipe:`` command without ``allow_pipe=True``.
        """
        items = spec_items(spec)
        for item in items:
            if item.startswith(PIPE_PREFIX):
                check_pipe(item, allow_pipe)
        if type(max_record_bytes) is not int or max_record_bytes < 1:
            raise ConfigError(f"max_record_bytes must be an int >= 1, got {max_record_bytes!r}")
        check_tolerance(max_errors, max_error_rate)
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise ConfigError(f"storage_options must be a dict, got {type(storage_options).__name__}")
        opener = ShardOpener(
            dict(storage_options) if storage_options else None, retry or RetryPolicy(), allow_pipe
        )
        return cls(
            spec, check_fields(fields), check_on_error(on_error), None, max_record_bytes,
            max_errors, max_error_rate, opener, name,
        )

    def shard_list(self) -> list[str]:
        return expand_spec(self.spec, self.opener.storage_options, self.opener.retry)

    def label(self) -> str:
        """The name of this source in statistics: ``name``, else format and first spec item."""
        if self.name is not None:
            return self.name
        items = spec_items(self.spec)
        more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
        return f"{type(self).__name__.removesuffix('Source').lower()}:{items[0]}{more}"

    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, item)`` for the items of one shard after the first ``skip``.

        ``index`` counts from 1 and includes skipped and blank items, so it is
        a stable position in the shard.

        Raises:
            ShardFault: the shard (or the rest of it) cannot be read.
        """
        raise NotImplementedError  # abstract

    def decode(self, path: str, index: int, item: Any) -> Record:
        """Turn one item into a record or raise :class:`RecordFormatError`."""
        raise NotImplementedError  # abstract

    def place(self, path: str, index: int, item: Any) -> str:
        return f"{path}:{index}"

    def __call__(self, ctx: Context, slot: Slot) -> Iterator[Record]:
        shards = self.shard_list()
        resume = slot.resume
        if resume:
            check_field("num_shards", resume.get("num_shards"), len(shards))
        plan = assignment_for(len(shards), ctx, self.shuffle_seed)
        policy = ErrorPolicy(self.on_error, self.max_errors, self.max_error_rate)
        # [position in plan, index reached in that shard, items kept overall,
        #  items read in that shard]
        cursor = [
            resume.get("shard", 0),
            resume.get("index", 0),
            resume.get("counter", 0),
            resume.get("ordinal", 0),
        ]
        num_shards = len(shards)
        first_counter = cursor[2]
        tally = [0, 0]  # [items this run owned that did not decode, shards that held no items]
        stride, offset = plan.stride, plan.offset
        label = self.label()

        def snapshot() -> dict[str, Any]:
            return {
                "shard": cursor[0],
                "index": cursor[1],
                "counter": cursor[2],
                "ordinal": cursor[3],
                "num_shards": num_shards,
                "skipped": dict(policy.counts),
            }

        def statistics() -> dict[str, Any]:
            owned = _owned(cursor[2], stride, offset) - _owned(first_counter, stride, offset)
            records = owned - tally[0]
            return {
                "records": records,
                "empty_shards": tally[1],
                "skipped": dict(policy.counts),
                "errors": [[e.place, e.reason, e.message[:200]]
                           for e in policy.errors[:STATS_ERRORS_PER_WORKER]],
                "sources": {label: records},
            }

        slot.snapshot = snapshot
        ctx.stats.register(statistics)
        # Balanced shares cover only shards with records: one worker looks at the others.
        probe = ctx.share is not None and ctx.global_worker == 0
        return self._records(shards, plan, cursor, policy, tally, probe)

    def _records(
        self,
        shards: list[str],
        plan: Assignment,
        cursor: list[int],
        policy: ErrorPolicy,
        tally: list[int],
        probe: bool = False,
    ) -> Iterator[Record]:
        decode = self.decode
        stride, offset, ranges = plan.stride, plan.offset, plan.ranges
        first_counter = cursor[2]
        path = ""
        if probe:
            yield from self._probe_unplanned(shards, policy, tally)
        while cursor[0] < len(ranges):
            position = cursor[0]
            shard, start, end = ranges[position]
            path = shards[shard]
            try:
                for index, item in self.items(path, cursor[1]):
                    ordinal = cursor[3]
                    if end is not None and ordinal >= end:
                        break  # a balanced share may end inside a shard
                    cursor[1] = index
                    cursor[3] = ordinal + 1
                    if ordinal < start:
                        continue  # ... or begin inside one
                    seen = cursor[2]
                    cursor[2] = seen + 1
                    if seen % stride != offset:
                        continue
                    try:
                        record = decode(path, index, item)
                    except RecordFormatError as exc:
                        tally[0] += 1
                        where = getattr(exc, "place", None) or self.place(path, index, item)
                        error = data_error(where, str(exc), exc.reason)
                        policy.handle(error, where, self._inputs(cursor[2], first_counter, stride, offset))
                        continue
                    except TorchseqError as exc:
                        tally[0] += 1
                        where = self.place(path, index, item)
                        policy.handle(exc, where, self._inputs(cursor[2], first_counter, stride, offset))
                        continue
                    yield record
                if cursor[3] == 0 and start == 0 and end != 0 and position % stride == offset:
                    tally[1] += 1  # a valid shard without records: not an error, but counted
            except ShardFault as fault:
                # Workers that share this shard (by record, or by item range) all
                # meet the fault: the one whose range holds its position reports
                # it. A fault ends the count of a shard, so it sits at the end of
                # the shard's last range, whose reader meets it on its last pull.
                at = cursor[3]
                if start <= at and (end is None or at <= end) and position % stride == offset:
                    policy.handle(fault.error, fault.place, self._inputs(cursor[2], first_counter, stride, offset))
            cursor[0] += 1
            cursor[1] = 0
            cursor[3] = 0
        policy.finish(path or "(no shards)", self._inputs(cursor[2], first_counter, stride, offset))

    def _probe_unplanned(self, shards: list[str], policy: ErrorPolicy, tally: list[int]) -> Iterator[Record]:
        """Open the shards a balanced plan gave to no one (they counted 0 items).

        Each is either validly empty (counted in the statistics) or broken (a
        missing file, not decompressible, not the format): its fault is
        reported here, once per epoch, as reading it would have.
        """
        from torchseq.index import shard_counts

        for path, count in zip(shards, shard_counts(self, shards), strict=True):
            if count:
                continue
            try:
                for _ in self.items(path, 0):
                    break  # counted 0 items a moment ago: nothing to deliver
                else:
                    tally[1] += 1
            except ShardFault as fault:
                policy.handle(fault.error, fault.place, 0)
        return
        yield  # a generator, for ``yield from``

    @staticmethod
    def _inputs(counter: int, first: int, stride: int, offset: int) -> int:
        return _owned(counter, stride, offset) - _owned(first, stride, offset)

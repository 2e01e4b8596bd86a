"""The shard-reading loop shared by every file format.

A format says how to iterate the items of one shard (lines, tar samples) and
how to decode one item into a record; this loop does sharding, resume and the
error policy once for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import DataError, ErrorPolicy, OnError, TorchseqError
from torchseq.records import Record, RecordFormatError
from torchseq.sharding import Assignment, assignment_for
from torchseq.sources.spec import ShardSpec, expand_spec
from torchseq.state import Slot, check_field

try:  # orjson parses pair lines ~2x faster; the stdlib is the fallback.
    import orjson

    loads: Callable[[bytes | str], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads

DEFAULT_MAX_RECORD_BYTES = 64 << 20


def decode_json(raw: bytes) -> Any:
    """Parse JSON bytes; the error says whether the bytes or the JSON were bad."""
    try:
        return loads(raw)
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise RecordFormatError(f"invalid UTF-8 at byte {bad.start}", "invalid utf-8") from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordFormatError(f"invalid JSON ({detail})", "invalid json") from None


@dataclass(frozen=True)
class ShardSource:
    """Base of the file sources. Subclasses implement ``items`` and ``decode``.

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

    def shard_list(self) -> list[str]:
        return expand_spec(self.spec)

    def items(self, path: str, skip: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, item)`` for the items of one shard after the first ``skip``.

        ``index`` counts from 1 and includes skipped and blank items, so it is
        a stable position in the shard. Shard-level faults (missing file,
        truncated stream) go to ``policy``.
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
        policy = ErrorPolicy(self.on_error)
        # [position in plan, index reached in that shard, items kept overall,
        #  items read in that shard]
        cursor = [
            resume.get("shard", 0),
            resume.get("index", 0),
            resume.get("counter", 0),
            resume.get("ordinal", 0),
        ]
        num_shards = len(shards)

        def snapshot() -> dict[str, Any]:
            return {
                "shard": cursor[0],
                "index": cursor[1],
                "counter": cursor[2],
                "ordinal": cursor[3],
                "num_shards": num_shards,
                "skipped": dict(policy.counts),
            }

        slot.snapshot = snapshot
        return self._records(shards, plan, cursor, policy)

    def _records(
        self, shards: list[str], plan: Assignment, cursor: list[int], policy: ErrorPolicy
    ) -> Iterator[Record]:
        decode = self.decode
        stride, offset, ranges = plan.stride, plan.offset, plan.ranges
        while cursor[0] < len(ranges):
            shard, start, end = ranges[cursor[0]]
            path = shards[shard]
            for index, item in self.items(path, cursor[1], policy):
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
                    where = getattr(exc, "place", None) or self.place(path, index, item)
                    policy.handle(DataError(f"{where}: {exc}"), exc.reason)
                    continue
                except TorchseqError as exc:
                    policy.handle(exc, type(exc).__name__)
                    continue
                yield record
            cursor[0] += 1
            cursor[1] = 0
            cursor[3] = 0

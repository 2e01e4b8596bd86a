"""JSON Lines shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.errors import DataError, ErrorPolicy, ShardNotFoundError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardSource, decode_json
from torchseq.sources.fs import open_text_stream

_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


@dataclass(frozen=True)
class JsonlSource(ShardSource):
    """One record per line; every line format of :mod:`torchseq.records` is accepted.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` is the line number).
    """

    def items(self, path: str, skip: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
        try:
            stream = open_text_stream(path)
        except FileNotFoundError:
            policy.handle(ShardNotFoundError(f"{path}: shard not found"), "missing shard")
            return
        index = 0
        with stream:
            try:
                for raw in stream:
                    index += 1
                    if index <= skip or (len(raw) < 4 and not raw.strip()):
                        continue
                    yield index, raw
            except _STREAM_ERRORS as exc:
                policy.handle(
                    DataError(
                        f"{path}:{index + 1}: truncated or corrupt compressed stream ({exc}); "
                        "the records before this line were read"
                    ),
                    "corrupt stream",
                )

    def decode(self, path: str, index: int, item: Any) -> Record:
        if len(item) > self.max_record_bytes:
            raise RecordFormatError(
                f"line of {len(item)} bytes exceeds max_record_bytes={self.max_record_bytes}",
                "record too large",
            )
        return normalize(decode_json(item), self.fields)

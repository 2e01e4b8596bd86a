"""JSON Lines shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ...; compression sniffed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from torchseq.errors import TorchseqError, UnknownFormatError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardFault, ShardSource, decode_json, lost_rest
from torchseq.sources.fs import STREAM_ERRORS, open_shard, sniff_container


class OversizedLine:
    """Stands in for a line longer than ``max_record_bytes`` (which was never held whole)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


@dataclass(frozen=True)
class JsonlSource(ShardSource):
    """One record per line; every line format of :mod:`torchseq.records` is accepted.

    Lines are read with a length limit of ``max_record_bytes``: a longer line
    is consumed in bounded pieces and reported, never materialised.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` is the line number).
    """

    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        index = 0
        limit = self.options.max_record_bytes + 1
        try:
            with open_shard(path, self.options.opener) as stream:
                what = sniff_container(stream.peek(512)[:512])
                if what is not None:
                    advice = "read it with read_webdataset" if what == "a tar archive" else (
                        "convert it to JSON Lines first"
                    )
                    raise UnknownFormatError(f"{path}: is {what}, not JSON Lines; {advice}")
                readline = stream.readline
                for raw in iter(partial(readline, limit), b""):
                    index += 1
                    if len(raw) < 4 and not raw.strip():
                        continue
                    if len(raw) == limit and raw[-1] != 10:  # no newline within the limit
                        size = len(raw)
                        while raw and raw[-1] != 10:
                            raw = readline(limit)
                            size += len(raw)
                        if index > skip:
                            yield index, OversizedLine(size)
                        continue
                    if index > skip:
                        yield index, raw
        except TorchseqError as exc:
            raise ShardFault(exc, path) from None
        except STREAM_ERRORS as exc:
            raise lost_rest(path, f"{path}:{index + 1}", "truncated or corrupt compressed stream", exc,
                            f"the {index} line(s) before") from None

    def decode(self, path: str, index: int, item: Any) -> Record:
        if item.__class__ is OversizedLine:
            raise RecordFormatError(
                f"line of {item.size} bytes exceeds max_record_bytes={self.options.max_record_bytes}",
                "record too large",
            )
        return normalize(decode_json(item), self.options.fields)

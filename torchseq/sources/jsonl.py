"""JSON Lines shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ...; compression sniffed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from torchseq.errors import TorchseqError, UnknownFormatError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardFault, ShardSource, lost_rest
from torchseq.sources.fs import STREAM_ERRORS, open_shard, sniff_container
from torchseq.sources.jsontext import BOM, decode_json, text_encoding


class OversizedLine:
    """Stands in for a line longer than ``max_record_bytes`` (which was never held whole)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


_SPACE = b" \t\r\n"  # JSON's whitespace


def _blank(raw: bytes) -> bool:
    """A line of JSON whitespace only (space, tab, CR, LF), after a byte order mark if any."""
    return not raw.removeprefix(BOM).strip(_SPACE)


@dataclass(frozen=True)
class JsonlSource(ShardSource):
    """One record per line; every line format of :mod:`torchseq.records` is accepted.

    Lines are read with a length limit of ``max_record_bytes``: a longer line
    is consumed in bounded pieces and reported, never materialised. Blank
    lines (JSON whitespace only, any length) are skipped and not counted as
    records; a UTF-16 or UTF-32 file is refused as a whole.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` is the line number).
    """

    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        index = 0
        limit = self.options.max_record_bytes + 1
        try:
            with open_shard(path, self.options.opener) as stream:
                head = stream.peek(512)[:512]
                what = sniff_container(head)
                if what is not None:
                    advice = "read it with read_webdataset" if what == "a tar archive" else (
                        "convert it to JSON Lines first"
                    )
                    raise UnknownFormatError(f"{path}: is {what}, not JSON Lines; {advice}")
                encoding = text_encoding(head)
                if encoding is not None:
                    raise UnknownFormatError(
                        f"{path}: is {encoding} text, not UTF-8 JSON Lines; re-encode it as UTF-8 "
                        f"(e.g. iconv -f {encoding} -t UTF-8)"
                    )
                readline = stream.readline
                for raw in iter(partial(readline, limit), b""):
                    index += 1
                    if len(raw) == limit and raw[-1] != 10:  # no newline within the limit
                        size, blank = len(raw), _blank(raw)
                        while raw and raw[-1] != 10:
                            raw = readline(limit)
                            size += len(raw)
                            blank = blank and not raw.strip(_SPACE)
                        if index > skip and not blank:
                            yield index, OversizedLine(size)
                        continue
                    first = raw[0]
                    if (first <= 32 or first == 0xEF) and _blank(raw):
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

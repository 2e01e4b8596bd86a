"""Builders of broken shards for the bad-input tests (each next to good ones)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path
from typing import Any

import webdataset

from tests.conftest import pair


def jsonl_bytes(ids: range | list[int]) -> bytes:
    return "".join(json.dumps(pair(i)) + "\n" for i in ids).encode()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> str:
    """A WebDataset shard written by ``webdataset.TarWriter`` (members as given, bytes)."""
    with webdataset.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def tar_sample(i: int, **extra: bytes) -> dict[str, Any]:
    anchor, positive = pair(i)
    return {"__key__": f"{i:06d}", "json": json.dumps({"anchor": anchor, "positive": positive}).encode(), **extra}


def write_good_tar(path: Path, ids: range) -> str:
    return write_tar(path, [tar_sample(i) for i in ids])


def member_offsets(path: str) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def recoverable_lines(truncated_gzip: bytes) -> list[bytes]:
    """The complete lines a reader can get out of a truncated gzip stream."""
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(truncated_gzip)
    lines = data.split(b"\n")
    return [line for line in lines[:-1]]  # the last piece has no newline: incomplete


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def tar_bytes_io(samples: list[dict[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with webdataset.TarWriter(buffer, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return buffer.getvalue()

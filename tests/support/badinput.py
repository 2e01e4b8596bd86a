"""Builders of broken shards for the bad-input tests (each next to good ones)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import webdataset

from tests.conftest import pair
from torchseq.sources.jsontext import use_parser

HAVE_ORJSON = importlib.util.find_spec("orjson") is not None
NO_ORJSON = pytest.mark.skipif(not HAVE_ORJSON, reason="orjson is not installed (the test extra installs it)")
#: Both JSON parsers: every test parametrized over these runs once with each.
JSON_PARSERS = [pytest.param("json", id="json"), pytest.param("orjson", id="orjson", marks=NO_ORJSON)]


@contextmanager
def json_parser(name: str) -> Iterator[None]:
    """Read JSON with ``name`` ("json": the standard library, "orjson") inside the block.

    DataLoader workers forked inside the block inherit the choice.
    """
    previous = use_parser(name)
    try:
        yield
    finally:
        use_parser(previous)


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


def claim(tar: bytes, offset: int, field: bytes) -> bytes:
    """``tar`` with its header at ``offset`` claiming another size (a 12-byte size field), checksum kept valid."""
    header = bytearray(tar[offset : offset + 512])
    header[124:136] = field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return tar[:offset] + bytes(header) + tar[offset + 512 :]


def claim_size(path: str, member: int, field: bytes) -> str:
    """Make the ``member``-th header of a tar file claim another size."""
    _, offset, _ = member_offsets(path)[member]
    Path(path).write_bytes(claim(Path(path).read_bytes(), offset, field))
    return path


def octal_size(size: int) -> bytes:
    """A ustar size field (up to 8 GiB - 1)."""
    return b"%011o\0" % size


def base256_size(size: int) -> bytes:
    """A GNU base-256 size field (any size)."""
    return bytes([0x80]) + size.to_bytes(11, "big")


def pax_lie(samples: list[dict[str, bytes]], name: str, claimed: int) -> bytes:
    """A tar of ``samples``, then a member ``name`` whose pax header claims ``claimed`` bytes (10 follow)."""
    good = tar_bytes_io(samples)
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        tar.getmembers()
        good = good[: tar.offset]  # without the end-of-archive marker
    info = tarfile.TarInfo(name)
    info.size = claimed  # beyond 8 GiB - 1: tarfile writes it as a pax "size" record
    info.mtime = 0
    header = info.tobuf(tarfile.PAX_FORMAT)
    return good + header + b"x" * 10 + bytes(1024)

"""Fast paths for the hot loop over pre-tokenized tar shards: members and ``.npy`` payloads.

A pre-tokenized sample is two or three tiny members (a few hundred bytes of
ids each), so per-member overhead decides throughput. Profiled (under load),
:mod:`tarfile` spent ~0.9 ms per sample building ``TarInfo`` objects and
``np.load`` ~0.3 ms per array parsing its header with ``ast``. Here:

* :func:`plain_members` walks a local, uncompressed tar with two ``read``
  calls per member, checking each header's checksum. It handles what
  ``webdataset.TarWriter`` writes (ustar regular files and directories, pax
  ``path``/``size`` records) and raises :class:`UnsupportedTar` on
  anything else (global pax or GNU long-name headers, base-256 sizes, truncation);
  the caller then re-reads the shard with :mod:`tarfile`, which either
  handles it or reports the precise error.
* :func:`npy_bytes` writes ``.npy`` members (what ``np.save`` writes, header
  cached); reading them is :func:`torchseq.sources.webdataset.decode_npy`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

_BLOCK = 512
_END = bytes(_BLOCK)
_REGULAR = frozenset({0x30, 0x00, 0x37})  # '0', NUL (old tar), '7' (contiguous)
_DIRECTORY = 0x35  # '5'
_PAX = 0x78  # 'x': pax extended header of the next member
_MAX_CACHED_HEADERS = 4096


class UnsupportedTar(Exception):
    """Internal: this shard needs :mod:`tarfile` (unusual header or damage)."""


def plain_members(stream: IO[bytes], *, strict_end: bool = False) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, payload)`` for the regular files of an uncompressed tar stream.

    With ``strict_end`` the archive must end with a zero block followed by
    nothing but zeros (else :class:`UnsupportedTar`, so that the caller's
    :mod:`tarfile` path reports the damage).

    Raises:
        UnsupportedTar: a header this reader does not handle, or a truncated archive.
    """
    read = stream.read
    pax_name: bytes | None = None
    pax_size: int | None = None
    while True:
        header = read(_BLOCK)
        if len(header) < _BLOCK:
            if not header and not strict_end:
                return
            raise UnsupportedTar("truncated header")
        if header == _END:
            if strict_end:
                while chunk := read(1 << 16):
                    if chunk.count(0) != len(chunk):
                        raise UnsupportedTar("data after the end-of-archive marker")
            return
        # The header checksum, as tarfile checks it (a mismatch, e.g. a
        # damaged header, goes to tarfile, which reports it).
        try:
            checksum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        except ValueError:
            raise UnsupportedTar("bad checksum field") from None
        if checksum != _header_sum(header):
            raise UnsupportedTar("header checksum mismatch")
        size_field = header[124:136]
        if size_field[0] & 0x80:
            raise UnsupportedTar("base-256 size")
        try:
            size = int(size_field.strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise UnsupportedTar("bad size field") from None
        flag = header[156]
        padded = (size + _BLOCK - 1) & ~(_BLOCK - 1)
        if flag == _PAX:
            # Extended header for the next member (TarWriter writes one per
            # member when mtime is a float): only path and size matter here.
            data = read(padded)
            if len(data) < padded:
                raise UnsupportedTar("truncated pax header")
            pax_name, pax_size = _pax_fields(data[:size])
            continue
        if pax_name is not None:
            name = pax_name
        else:
            name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
        if pax_size is not None:
            size = pax_size
            padded = (size + _BLOCK - 1) & ~(_BLOCK - 1)
        if flag in _REGULAR:
            data = read(padded)
            if len(data) < padded:
                raise UnsupportedTar("truncated member")
            yield name.decode("utf-8", "surrogateescape"), data[:size]
        elif flag == _DIRECTORY and size == 0:
            pass
        else:
            raise UnsupportedTar(f"header type {chr(flag)!r}")
        pax_name = pax_size = None


def _header_sum(header: bytes) -> int:
    """The tar header checksum: 256 plus the sum of the header's bytes outside the checksum field.

    ``sum(header)`` costs ~4 µs in Python, and a pre-tokenized pair has four
    headers. ``zlib.adler32`` gives the byte sum modulo 65521 in C; it is the
    exact sum whenever at most 256 bytes are non-zero (the sum is then below
    65521), which holds for the headers TarWriter writes. Otherwise: ``sum``.
    """
    if _BLOCK - header.count(0) <= 256:
        total = (zlib.adler32(header) - 1) & 0xFFFF
    else:
        total = sum(header)
    return 256 + total - sum(header[148:156])


def _pax_fields(data: bytes) -> tuple[bytes | None, int | None]:
    """``path`` and ``size`` of a pax extended header ("LEN key=value\\n" records)."""
    name: bytes | None = None
    size: int | None = None
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            raise UnsupportedTar("bad pax record")
        try:
            length = int(data[position:space])
        except ValueError:
            raise UnsupportedTar("bad pax record") from None
        if length <= 0:
            raise UnsupportedTar("bad pax record")
        key, _, value = data[space + 1 : position + length - 1].partition(b"=")
        if key == b"path":
            name = value
        elif key == b"size":
            try:
                size = int(value)
            except ValueError:
                raise UnsupportedTar("bad pax size") from None
        elif key in (b"linkpath", b"GNU.sparse.map", b"GNU.sparse.size"):
            raise UnsupportedTar(f"pax {key.decode()!r}")
        position += length
    return name, size


_NPY_WRITE_HEADERS: dict[tuple[str, int], bytes] = {}


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """The ``.npy`` file of a 1-D array, byte for byte what ``np.save`` writes (header cached)."""
    key = (array.dtype.str, len(array))
    header = _NPY_WRITE_HEADERS.get(key)
    if header is None:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        full = buffer.getvalue()
        header = full[: len(full) - array.nbytes]
        if len(_NPY_WRITE_HEADERS) < _MAX_CACHED_HEADERS:
            _NPY_WRITE_HEADERS[key] = header
    return header + array.tobytes()

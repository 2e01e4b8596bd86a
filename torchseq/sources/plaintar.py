"""The fast reader of local, uncompressed WebDataset tars: :class:`PlainTar`.

A pre-tokenized sample is two or three tiny members, so per-member overhead
decides throughput: profiled (under load), :mod:`tarfile` spent ~0.9 ms per
sample building ``TarInfo`` objects. :class:`PlainTar` makes two ``read``
calls per member and checks each header's checksum. It handles what
``webdataset.TarWriter`` writes (ustar regular files and directories, pax
``path``/``size`` records) and raises :class:`UnsupportedTar` on anything else
(global pax or GNU long-name headers, base-256 sizes, truncation); the caller
then re-reads the shard with :mod:`tarfile` (:mod:`torchseq.sources.tar`).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from typing import IO

from torchseq.errors import CorruptShardError, located
from torchseq.sources.base import ShardFault

_BLOCK = 512
_END = bytes(_BLOCK)
_REGULAR = frozenset({0x30, 0x00, 0x37})  # '0', NUL (old tar), '7' (contiguous)
_DIRECTORY = 0x35  # '5'
_PAX = 0x78  # 'x': pax extended header of the next member


class UnsupportedTar(Exception):
    """Internal: this shard needs :mod:`tarfile` (unusual header or damage)."""


class PlainTar:
    """The regular files of a local, uncompressed tar; a payload is read only when asked for.

    :meth:`members` yields ``(name, size, size)``; :meth:`payload` reads the
    payload of the member just yielded, before the next one is pulled. A
    payload not asked for (an oversized or already delivered sample) is
    skipped by seeking, never read. Every size a header claims is checked
    against the bytes left in the file before anything is read or skipped.
    """

    def __init__(self, stream: IO[bytes], size: int, shard: str) -> None:
        self._read = stream.read
        self._seek = stream.seek
        self.size = size  # of the file
        self.position = 0  # bytes of the file consumed
        self.shard = shard  # as named in messages
        self._pending = 0  # padded payload bytes of the member just yielded, not read yet
        self._lie: ClaimsTooMuch | None = None  # the member just yielded claims more than the file holds

    def members(self, *, strict_end: bool = False) -> Iterator[tuple[str, int, int]]:
        """With ``strict_end`` the archive must end with a zero block followed by
        nothing but zeros (else :class:`UnsupportedTar`, so that the caller's
        :mod:`tarfile` path reports the damage).

        Raises:
            UnsupportedTar: a header this reader does not handle, or a truncated archive.
            ClaimsTooMuch: a header claims more bytes than the file holds.
        """
        read = self._read
        pax_name: bytes | None = None
        pax_size: int | None = None
        while True:
            if self._pending:
                self._seek(self._pending, io.SEEK_CUR)
                self.position += self._pending
                self._pending = 0
            header = read(_BLOCK)
            self.position += len(header)
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
            if flag == _PAX:
                # Extended header for the next member (TarWriter writes one per
                # member when mtime is a float): only path and size matter here.
                if size > self.size - self.position:
                    raise ClaimsTooMuch(f"{self.shard}::(pax header at byte {self.position - _BLOCK})", size,
                                        self.size - self.position)
                padded = (size + _BLOCK - 1) & ~(_BLOCK - 1)
                data = read(padded)
                self.position += len(data)
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
            if flag in _REGULAR:
                text = name.decode("utf-8", "surrogateescape")
                left = self.size - self.position
                if size > left:
                    # Yielded all the same, so that the sample before it is complete and goes
                    # out first; reading the payload, or going on past it, raises.
                    self._lie = ClaimsTooMuch(f"{self.shard}::{text}", size, left)
                    yield text, size, size
                    raise self._lie
                self._pending = (size + _BLOCK - 1) & ~(_BLOCK - 1)
                if self._pending > left:
                    raise UnsupportedTar("truncated member")  # the padding is cut: tarfile says how
                yield text, size, size
            elif not (flag == _DIRECTORY and size == 0):
                raise UnsupportedTar(f"header type {chr(flag)!r}")
            pax_name = pax_size = None

    def payload(self, size: int) -> bytes:
        """The payload of the member just yielded (``size`` bytes, as it claimed)."""
        if self._lie is not None:
            raise self._lie
        data = self._read(self._pending)
        self.position += len(data)
        self._pending = 0
        if len(data) < size:
            raise UnsupportedTar("truncated member")  # the file shrank while being read
        return data if len(data) == size else data[:size]


class ClaimsTooMuch(Exception):
    """Internal: a header claims ``size`` bytes for a member where only ``have`` follow.

    A lying header or a cut archive; the reader turns it into a
    :class:`~torchseq.errors.CorruptShardError` that says how many samples came before.
    """

    def __init__(self, place: str, size: int, have: int) -> None:
        super().__init__(place)
        self.place, self.size, self.have = place, size, have

    def fault(self, shard: str, done: int) -> ShardFault:
        return ShardFault(located(
            CorruptShardError, self.place,
            f"corrupt or truncated tar: the header claims {self.size:,} bytes for this member, but the "
            f"archive holds only {self.have:,} more; the {done} sample(s) before it were read, the rest "
            "of the shard is lost: re-write or re-download the shard",
        ), shard)


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

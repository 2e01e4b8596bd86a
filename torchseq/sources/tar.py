"""Reading WebDataset tar shards into samples: a fast local reader and a strict streaming one.

Members are grouped into samples by key exactly as webdataset does
(``webdataset.tariterators.base_plus_ext``): consecutive members sharing a key.

* :func:`local_samples` walks a local, uncompressed tar through
  :func:`plain_members`, two ``read`` calls per member, checking each
  header's checksum. A pre-tokenized sample is two or three tiny members, so
  per-member overhead decides throughput: profiled (under load), :mod:`tarfile`
  spent ~0.9 ms per sample building ``TarInfo`` objects. It handles what
  ``webdataset.TarWriter`` writes (ustar regular files and directories, pax
  ``path``/``size`` records) and raises :class:`UnsupportedTar` on anything
  else (global pax or GNU long-name headers, base-256 sizes, truncation); the
  caller then re-reads the shard with :func:`stream_samples`.
* :func:`stream_samples` reads any tar (compressed, remote) with :mod:`tarfile`
  in streaming mode, so that a corrupt member is reported as
  ``shard.tar::member`` and the samples before it are kept (webdataset's own
  iterator rewrites the exception's arguments instead). ``tarfile`` silently
  treats an unreadable header in the middle of an archive as its end; this
  reader checks that an archive really ends with the zero blocks of an
  end-of-archive marker, so a corrupt header or a cut at a member boundary is
  reported instead of losing the rest of the shard in silence.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from webdataset.tariterators import base_plus_ext

from torchseq.errors import CorruptShardError, TorchseqError, UnknownFormatError, located
from torchseq.sources.base import ShardFault, lost_rest
from torchseq.sources.fs import STREAM_ERRORS, ShardOpener, open_shard, sniff_container

_BLOCK = 512
_END = bytes(_BLOCK)
_REGULAR = frozenset({0x30, 0x00, 0x37})  # '0', NUL (old tar), '7' (contiguous)
_DIRECTORY = 0x35  # '5'
_PAX = 0x78  # 'x': pax extended header of the next member


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


# tarfile lets a few plain exceptions escape from malformed headers (found by fuzzing).
_TAR_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, ValueError, UnicodeError, OverflowError, *STREAM_ERRORS
)
_INVALID_HEADER: type[Exception] = getattr(tarfile, "InvalidHeaderError")  # noqa: B009 - not in typeshed


class _Tail(io.RawIOBase):
    """Passes a stream through and remembers the last bytes read, with their offsets.

    After ``tarfile`` stops, the block where it stopped is looked up here to
    tell a real end-of-archive marker (zeros) from a corrupt header.
    """

    def __init__(self, inner: io.BufferedReader) -> None:
        super().__init__()
        self._inner = inner
        self.position = 0
        self._chunks: list[tuple[int, bytes]] = []

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        n = self._inner.readinto(target)
        if n:
            self._chunks.append((self.position, bytes(memoryview(target)[:n])))
            if len(self._chunks) > 3:
                del self._chunks[0]
            self.position += n
        return n

    def recorded(self, start: int, size: int) -> bytes:
        """Bytes ``start .. start+size`` as far as they are still remembered."""
        out = bytearray()
        for at, chunk in self._chunks:
            lo, hi = max(start, at), min(start + size, at + len(chunk))
            if lo < hi:
                out += chunk[lo - at : hi - at]
        return bytes(out)

    def rest_is_zero(self, start: int) -> bool:
        """Whether everything from ``start`` to the end of the stream is zero bytes."""
        remembered = self.recorded(start, max(0, self.position - start))
        if remembered.count(0) != len(remembered):
            return False
        while chunk := self._inner.read(1 << 16):
            if chunk.count(0) != len(chunk):
                return False
        return True


class _Samples:
    """Groups a tar's members into samples, as webdataset does: consecutive members sharing a key.

    Yields ``(index, (key, {ext: payload}, oversize))`` for the samples after
    the first ``skip``; the payloads of skipped samples are never fetched.
    ``oversize`` is ``(ext, bytes so far)`` for a sample over ``limit`` bytes
    (its payloads are dropped). ``done`` counts the samples completed so far.
    """

    def __init__(self, skip: int, limit: int) -> None:
        self.skip = skip
        self.limit = limit
        self.done = 0

    def group(
        self, entries: Iterable[tuple[str, int, Any]], fetch: Callable[[Any], bytes]
    ) -> Iterator[tuple[int, Any]]:
        """``entries`` are ``(member name, size, handle)``; ``fetch(handle)`` gives the payload."""
        skip, limit = self.skip, self.limit
        key: str | None = None
        members: dict[str, bytes] = {}
        oversize: tuple[str, int] | None = None
        size = 0
        for name, length, handle in entries:
            base, ext = _split_name(name)
            if base is None or base.startswith("__") or ext is None:
                continue
            if base != key:
                if key is not None:
                    self.done += 1
                    if self.done > skip:
                        yield self.done, (key, members, oversize)
                key, members, oversize, size = base, {}, None, 0
            if self.done + 1 > skip and oversize is None:
                size += length
                if size > limit:
                    oversize, members = (ext, size), {}
                else:
                    members[ext] = fetch(handle)
        if key is not None:
            self.done += 1
            if self.done > skip:
                yield self.done, (key, members, oversize)


def local_samples(path: str, skip: int, limit: int) -> Iterator[tuple[int, Any]]:
    """``items`` for a local uncompressed tar through the fast member reader.

    Raises:
        UnsupportedTar, OSError: read the shard with :func:`stream_samples` instead.
    """
    samples = _Samples(skip, limit)
    with open(path, "rb", buffering=1 << 20) as stream:
        entries = ((name, len(data), data) for name, data in plain_members(stream, strict_end=True))
        yield from samples.group(entries, bytes)


def stream_samples(path: str, opener: ShardOpener, skip: int, limit: int) -> Iterator[tuple[int, Any]]:
    """``items`` for any tar shard through :mod:`tarfile`; damage is a :class:`ShardFault` naming the member.

    Raises:
        ShardFault: the shard (or the rest of it) cannot be read.
    """
    samples = _Samples(skip, limit)
    member = "(first header)"

    def entries(tar: Any, tail: _Tail) -> Iterator[tuple[str, int, Any]]:
        nonlocal member
        last = "(none)"
        while True:
            member = f"(header at byte {tar.offset})"
            info = tar.next()
            if info is None:
                break
            tar.members = []  # streaming mode would keep every TarInfo otherwise
            member = last = info.name
            if info.isreg():
                yield info.name, info.size, info
        # Before the last sample goes out: a corrupt header may have cut it short.
        check_end(path, tail, tar.offset, last)

    def fetch(tar: Any) -> Any:
        def read(info: tarfile.TarInfo) -> bytes:
            handle = tar.extractfile(info)
            return handle.read() if handle is not None else b""
        return read

    try:
        with open_shard(path, opener) as stream:
            head = stream.peek(512)[:512]
            check_head(path, head)
            tail = _Tail(stream)
            tar: Any = tarfile.open(fileobj=tail, mode="r|")
            yield from samples.group(entries(tar, tail), fetch(tar))
    except TorchseqError as exc:
        raise ShardFault(exc, path) from None
    except _TAR_ERRORS as exc:
        raise lost_rest(path, f"{path}::{member}", "corrupt or truncated tar", exc,
                        f"the {samples.done} sample(s) before it") from None


def check_head(path: str, head: bytes) -> None:
    if not head:
        raise CorruptShardError(
            f"{path}: empty file (0 bytes); even an empty tar archive holds an end-of-archive "
            "marker, so it was truncated: re-write or re-download the shard"
        )
    what = sniff_container(head)
    if what is not None and what != "a tar archive":
        raise UnknownFormatError(f"{path}: is {what}, not a tar archive; convert it first")
    if what is None and head.lstrip()[:1] in (b"{", b"["):
        raise UnknownFormatError(
            f"{path}: looks like JSON Lines, not a tar archive; read it with read_jsonl"
        )
    if what is None and len(head) >= _BLOCK and head[:_BLOCK].count(0) != _BLOCK:
        # Not even an old-style tar header: tarfile would only say "invalid header".
        try:
            tarfile.TarInfo.frombuf(head[:_BLOCK], "utf-8", "surrogateescape")
        except _INVALID_HEADER:
            raise UnknownFormatError(
                f"{path}: is not a tar archive (no valid tar header at byte 0); "
                "read_webdataset needs WebDataset .tar shards"
            ) from None


def check_end(path: str, tail: _Tail, end: int, last: str) -> None:
    """The archive must end with a zero block and nothing but zeros after it."""
    block = tail.recorded(end, _BLOCK)
    if len(block) < _BLOCK:
        raise located(
            CorruptShardError, f"{path}::{last}",
            f"truncated tar: the archive stops at byte {end} without an end-of-archive marker, so "
            "later samples may be missing; re-write or re-download the shard",
        )
    if block.count(0) != _BLOCK or not tail.rest_is_zero(end + _BLOCK):
        raise located(
            CorruptShardError, f"{path}::(header at byte {end})",
            f"corrupt tar header after member {last}; the sample being read and all after it "
            "are lost: re-write or re-download the shard",
        )


def _split_name(name: str) -> tuple[str | None, str | None]:
    """``webdataset``'s ``base_plus_ext`` (key up to the first dot of the file name), fast."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot > slash + 1:
        return name[:dot], name[dot + 1 :]
    base, ext = base_plus_ext(name)  # unusual names: the regex decides
    return base, ext

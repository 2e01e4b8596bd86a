"""Reading WebDataset tar shards into samples: a fast local reader and a strict streaming one.

Members are grouped into samples by key exactly as webdataset does
(``webdataset.tariterators.base_plus_ext``): consecutive members sharing a key.

* :func:`local_samples` walks a local, uncompressed tar through the fast
  member reader :class:`~torchseq.sources.plaintar.PlainTar`; on anything it
  does not handle (:class:`~torchseq.sources.plaintar.UnsupportedTar`) the
  caller re-reads the shard with :func:`stream_samples`.
* :func:`stream_samples` reads any tar (compressed, remote) with :mod:`tarfile`
  in streaming mode, so that a corrupt member is reported as
  ``shard.tar::member`` and the samples before it are kept (webdataset's own
  iterator rewrites the exception's arguments instead). Member data it does
  not deliver is skipped in bounded reads that stop where the stream ends,
  so a header that claims more than exists is reported at once. ``tarfile``
  silently treats an unreadable header in the middle of an archive as its
  end; this reader checks that an archive really ends with the zero blocks of
  an end-of-archive marker, so a corrupt header or a cut at a member boundary
  is reported instead of losing the rest of the shard in silence.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webdataset.tariterators import base_plus_ext

from torchseq.errors import CorruptShardError, TorchseqError, UnknownFormatError, located
from torchseq.sources.base import ShardFault, lost_rest
from torchseq.sources.fs import STREAM_ERRORS, ShardOpener, open_shard, sniff_container
from torchseq.sources.plaintar import ClaimsTooMuch, PlainTar

_BLOCK = 512


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


def local_samples(path: str, shard: str, skip: int, limit: int) -> Iterator[tuple[int, Any]]:
    """``items`` for a local uncompressed tar (``shard`` in messages) through the fast member reader.

    Raises:
        UnsupportedTar, OSError: read the shard with :func:`stream_samples` instead.
        ShardFault: a header claims more bytes than the file holds.
    """
    samples = _Samples(skip, limit)
    with open(path, "rb", buffering=1 << 20) as stream:
        plain = PlainTar(stream, os.fstat(stream.fileno()).st_size, shard)
        try:
            yield from samples.group(plain.members(strict_end=True), plain.payload)
        except ClaimsTooMuch as lie:
            raise lie.fault(shard, samples.done) from None


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
        info = None
        while True:
            if info is not None:
                _skip_rest(tar, info, f"{path}::{last}")
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
            if handle is None:
                return b""
            try:
                data: bytes = handle.read()  # reads what there is, never allocates the claimed size
            except tarfile.ReadError:  # "unexpected end of data"
                raise ClaimsTooMuch(f"{path}::{info.name}", info.size,
                                    tar.fileobj.tell() - info.offset_data) from None
            return data
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
    except ClaimsTooMuch as lie:
        raise lie.fault(path, samples.done) from None
    except _TAR_ERRORS as exc:
        raise lost_rest(path, f"{path}::{member}", "corrupt or truncated tar", exc,
                        f"the {samples.done} sample(s) before it") from None


def _skip_rest(tar: Any, info: tarfile.TarInfo, place: str) -> None:
    """Read past the rest of ``info``'s data in bounded chunks, as far as the archive goes.

    ``tarfile`` would skip it itself, but in streaming mode it loops over
    ``size / 10 KiB`` reads even after the stream ended, so a header claiming
    a terabyte took hours; here the end of the stream ends the skip.
    """
    stream = tar.fileobj
    while (gap := tar.offset - stream.tell()) > 0:
        if not stream.read(min(gap, 1 << 20)):
            have = stream.tell() - info.offset_data
            if have < info.size:
                raise ClaimsTooMuch(place, info.size, have)
            raise located(
                CorruptShardError, place,
                f"truncated tar: the archive stops at byte {stream.tell()} without an end-of-archive "
                "marker, so later samples may be missing; re-write or re-download the shard",
            )


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

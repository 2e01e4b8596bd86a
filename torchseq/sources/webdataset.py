"""WebDataset tar shards (``.tar``, ``.tar.gz``, ...) as written by ``webdataset.TarWriter``.

Members are grouped into samples by key exactly as webdataset does
(``webdataset.tariterators.base_plus_ext``). The tar stream is read with
:mod:`tarfile` in streaming mode so that a corrupt member is reported as
``shard.tar::member`` and the samples before it are kept (webdataset's own
iterator rewrites the exception's arguments instead). ``tarfile`` silently
treats an unreadable header in the middle of an archive as its end; this
reader checks that an archive really ends with the zero blocks of an
end-of-archive marker, so a corrupt header or a cut at a member boundary is
reported instead of losing the rest of the shard in silence.

Members, per sample ``KEY``:

* ``KEY.json`` -- a record in any format of :mod:`torchseq.records`;
* ``KEY.<field>.txt`` -- a text field (``KEY.anchor.txt``, ``KEY.positive.txt``);
* ``KEY.<field>.json`` -- a JSON field (``KEY.negatives.json``);
* ``KEY.<field>.npy`` -- pre-tokenized ids for ``field``: parsed by a strict
  header check (plain numeric dtypes only) and read with ``numpy.frombuffer``;
  never ``numpy.load``, never unpickled; ``KEY.negatives.<k>.npy`` -- ids of hard negative ``k``
  (as ``torchseq pretokenize`` writes them);
* pickle members (``.pyd``, ``.pickle``, ``.pkl``) are refused, never decoded;
* anything else is passed through as bytes under its extension.

A sample whose members add up to more than ``max_record_bytes`` is bad input;
its members are not read into memory.

A directory spec reads the shards listed by its ``index.json`` (written by
``torchseq pretokenize``), else its ``.tar`` / ``.tar.gz`` files. Local
uncompressed ``.tar`` shards go through the fast member reader of
:mod:`torchseq.sources.tarstream`; anything it does not handle (and every
damaged shard) is read again by :mod:`tarfile`, from the first sample not yet
delivered, which gives the errors described here.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.tariterators import base_plus_ext

from torchseq.errors import CorruptShardError, ShardNotFoundError, TorchseqError, UnknownFormatError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardFault, ShardSource, decode_json
from torchseq.sources.fs import STREAM_ERRORS, open_shard, sniff_container
from torchseq.sources.spec import is_url
from torchseq.sources.tarstream import UnsupportedTar, plain_members

PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl"})
BLOCK = tarfile.BLOCKSIZE
# tarfile lets a few plain exceptions escape from malformed headers (found by fuzzing).
_TAR_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError, ValueError, UnicodeError, OverflowError, *STREAM_ERRORS
)
_INVALID_HEADER: type[Exception] = getattr(tarfile, "InvalidHeaderError")  # noqa: B009 - not in typeshed

_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[iufb][1248])', 'fortran_order': (True|False), "
    rb"'shape': \(((?:\d+, )*\d+,?|)\), \} *\n"
)


_NpyLayout = tuple[np.dtype[Any], tuple[int, ...], int, str]
_NPY_LAYOUTS: dict[bytes, _NpyLayout] = {}
_MAX_NPY_LAYOUTS = 4096


def decode_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` member as an array, or :class:`RecordFormatError`; never unpickles.

    Only version 1/2 headers in the exact form ``numpy.save`` writes, with a
    plain numeric dtype, and a data length that matches the shape. A header
    is parsed once and its layout cached by its bytes: pre-tokenized shards
    repeat a few hundred distinct headers (one per dtype and length).
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10 or data[6] not in (1, 2):
        raise RecordFormatError("not an .npy array (bad magic or version)", "invalid npy")
    if data[6] == 1:
        body = 10 + int.from_bytes(data[8:10], "little")
    else:
        body = 12 + int.from_bytes(data[8:12], "little")
    header = data[:body]
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        layout = _npy_layout(header, 10 if data[6] == 1 else 12)
        if len(_NPY_LAYOUTS) < _MAX_NPY_LAYOUTS:
            _NPY_LAYOUTS[header] = layout
    dtype, shape, count, order = layout
    if len(data) - body != count * dtype.itemsize:
        raise RecordFormatError(
            f".npy data holds {len(data) - body} bytes, its header says {count * dtype.itemsize}",
            "invalid npy",
        )
    flat: np.ndarray = np.frombuffer(data, dtype=dtype, count=count, offset=body)
    return flat if len(shape) == 1 else flat.reshape(shape, order=order)  # type: ignore[call-overload]


def _npy_layout(header: bytes, start: int) -> _NpyLayout:
    """Dtype, shape, element count and order from a ``.npy`` header (magic and length included)."""
    match = _NPY_HEADER.fullmatch(header, start)
    if match is None:
        raise RecordFormatError("unsupported .npy header (plain numeric arrays only)", "invalid npy")
    dtype = np.dtype(match.group(1).decode())
    shape = tuple(int(n) for n in match.group(3).decode().replace(",", " ").split())
    count = 1
    for n in shape:
        count *= n
    return dtype, shape, count, "F" if match.group(2) == b"True" else "C"


def _member_error(message: str, reason: str, place: str) -> RecordFormatError:
    error = RecordFormatError(message, reason)
    error.place = place  # type: ignore[attr-defined]
    return error


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


@dataclass(frozen=True)
class WebDatasetSource(ShardSource):
    """Samples of WebDataset tar shards.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` counts samples).
    """

    def _directory(self) -> str | None:
        spec = self.spec
        if isinstance(spec, (str, os.PathLike)):
            path = os.fspath(spec)
            if not is_url(path) and os.path.isdir(path.removeprefix("file://")):
                return path.removeprefix("file://")
        return None

    def shard_list(self) -> list[str]:
        """A directory reads the shards its ``index.json`` lists (see
        :mod:`torchseq.pretokenize`), else its ``*.tar`` / ``*.tar.gz`` files."""
        directory = self._directory()
        if directory is None:
            return super().shard_list()
        from torchseq.pretokenize import index_shards

        listed = index_shards(directory)
        if listed is not None:
            return listed
        found = sorted(str(p) for ext in ("*.tar", "*.tar.gz") for p in Path(directory).glob(ext))
        if not found:
            raise ShardNotFoundError(f"{directory}: directory holds no index.json and no .tar shards")
        return found

    def resolved_pad_id(self) -> int:
        """The pad id recorded by ``torchseq pretokenize`` beside the shards; 0 without one."""
        from torchseq.pretokenize import read_index

        directory = self._directory()
        if directory is None:
            shards = super().shard_list()
            if not shards or is_url(shards[0]):
                return 0
            directory = os.path.dirname(shards[0].removeprefix("file://")) or "."
        index = read_index(directory)
        return int(index["tokenizer"]["pad_id"]) if index is not None else 0

    def place(self, path: str, index: int, item: Any) -> str:
        key, members, _ = item
        if "json" in members:
            return f"{path}::{key}.json"
        return f"{path}::{key}"

    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        local = path.removeprefix("file://")
        if path.endswith(".tar") and not is_url(path) and os.path.isfile(local):
            try:
                for index, item in self._plain_items(local, skip):
                    skip = index
                    yield index, item
                return
            except (UnsupportedTar, OSError):
                pass  # tarfile reads the rest, or says precisely what is wrong
        yield from self._tarfile_items(path, skip)

    def _plain_items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        """``items`` for a local uncompressed tar through the fast member reader."""
        samples = _Samples(skip, self.max_record_bytes)
        with open(path, "rb", buffering=1 << 20) as stream:
            entries = ((name, len(data), data) for name, data in plain_members(stream, strict_end=True))
            yield from samples.group(entries, bytes)

    def _tarfile_items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        samples = _Samples(skip, self.max_record_bytes)
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
            self._check_end(path, tail, tar.offset, last)

        def fetch(tar: Any) -> Any:
            def read(info: tarfile.TarInfo) -> bytes:
                handle = tar.extractfile(info)
                return handle.read() if handle is not None else b""
            return read

        try:
            with open_shard(path, self.opener) as stream:
                head = stream.peek(512)[:512]
                self._check_head(path, head)
                tail = _Tail(stream)
                tar: Any = tarfile.open(fileobj=tail, mode="r|")
                yield from samples.group(entries(tar, tail), fetch(tar))
        except TorchseqError as exc:
            raise ShardFault(exc, path) from None
        except _TAR_ERRORS as exc:
            place = f"{path}::{member}"
            error = CorruptShardError(
                f"{place}: corrupt or truncated tar ({type(exc).__name__}: {exc}); the {samples.done} "
                "sample(s) before it were read, the rest of the shard is lost: re-write or "
                "re-download the shard"
            )
            raise ShardFault(error, place) from None

    @staticmethod
    def _check_head(path: str, head: bytes) -> None:
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
        if what is None and len(head) >= BLOCK and head[:BLOCK].count(0) != BLOCK:
            # Not even an old-style tar header: tarfile would only say "invalid header".
            try:
                tarfile.TarInfo.frombuf(head[:BLOCK], "utf-8", "surrogateescape")
            except _INVALID_HEADER:
                raise UnknownFormatError(
                    f"{path}: is not a tar archive (no valid tar header at byte 0); "
                    "read_webdataset needs WebDataset .tar shards"
                ) from None

    @staticmethod
    def _check_end(path: str, tail: _Tail, end: int, last: str) -> None:
        """The archive must end with a zero block and nothing but zeros after it."""
        block = tail.recorded(end, BLOCK)
        if len(block) < BLOCK:
            raise CorruptShardError(
                f"{path}::{last}: truncated tar: the archive stops at byte {end} without an "
                "end-of-archive marker, so later samples may be missing; re-write or "
                "re-download the shard"
            )
        if block.count(0) != BLOCK or not tail.rest_is_zero(end + BLOCK):
            raise CorruptShardError(
                f"{path}::(header at byte {end}): corrupt tar header after member {last}; the "
                "sample being read and all after it are lost: re-write or re-download the shard"
            )

    def decode(self, path: str, index: int, item: Any) -> Record:
        key, members, oversize = item
        if oversize is None and self.fields is None:
            fast = _decode_token_sample(path, key, members)
            if fast is not None:
                return fast
        if oversize is not None:
            ext, size = oversize
            raise _member_error(
                f"sample of more than {size} bytes exceeds max_record_bytes={self.max_record_bytes}",
                "record too large",
                f"{path}::{key}.{ext}",
            )
        obj: Any = {}
        extra: dict[str, Any] = {}
        tokens: dict[str, Any] = {}
        for ext, data in members.items():
            head, _, last = ext.rpartition(".")
            if last in PICKLE_EXTENSIONS:
                raise _member_error(
                    "pickle member refused: torchseq never unpickles shard content",
                    "unsafe content",
                    f"{path}::{key}.{ext}",
                )
            if ext == "json":
                try:
                    obj = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None
            elif last == "json":
                try:
                    extra[head] = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None
            elif last == "txt":
                try:
                    extra[head or "txt"] = data.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise _member_error(
                        f"invalid UTF-8 at byte {bad.start}", "invalid utf-8", f"{path}::{key}.{ext}"
                    ) from None
            elif last == "npy":
                tokens[head] = _npy_member(path, key, ext, data)
            else:
                extra[ext] = data
        if isinstance(obj, dict):
            merged = {**obj, **extra}
            if tokens and "anchor" not in merged and self.fields is None:
                record: Record = dict(merged)
            else:
                record = normalize(merged, self.fields)
        else:
            record = normalize(obj, self.fields)
            if extra:  # field members may replace texts: check the result again
                record = normalize({**record, **extra})
        if tokens:
            record["tokens"] = _gather_negatives(tokens)
        record.setdefault("__key__", key)
        return record


def _npy_member(path: str, key: str, ext: str, data: bytes) -> Any:
    try:
        return decode_npy(data)
    except RecordFormatError as exc:
        raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None


def _negative_number(name: str) -> int:
    suffix = name.partition(".")[2]
    return int(suffix) if suffix.isdigit() else -1


def _gather_negatives(tokens: dict[str, Any]) -> dict[str, Any]:
    """``negatives.0``, ``negatives.1``, ... become the list ``negatives``."""
    negatives = sorted((k for k in tokens if k.startswith("negatives.")), key=_negative_number)
    if negatives:
        tokens["negatives"] = [tokens.pop(k) for k in negatives]
    return tokens


def _decode_token_sample(path: str, key: str, members: dict[str, bytes]) -> Record | None:
    """The hot path for pre-tokenized samples (only ``.npy`` members); None for any other sample.

    Gives the record the general decoder would give: ``{"tokens": ..., "__key__": key}``.
    """
    tokens: dict[str, Any] = {}
    negatives = False
    for ext, data in members.items():
        dots = ext.count(".")
        if dots > 2 or not ext.endswith(".npy"):
            return None
        negatives = negatives or dots == 2  # "negatives.<k>.npy"
        tokens[ext[:-4]] = _npy_member(path, key, ext, data)
    if not tokens:
        return None
    return {"tokens": _gather_negatives(tokens) if negatives else tokens, "__key__": key}


def _split_name(name: str) -> tuple[str | None, str | None]:
    """``webdataset``'s ``base_plus_ext`` (key up to the first dot of the file name), fast."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot > slash + 1:
        return name[:dot], name[dot + 1 :]
    base, ext = base_plus_ext(name)  # unusual names: the regex decides
    return base, ext

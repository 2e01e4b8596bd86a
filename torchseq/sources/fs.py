"""Opening shards: local files, fsspec URLs, opt-in ``pipe:`` commands; decompression.

Compression is recognised by the first bytes (gzip, zstd, bz2, xz), so a
Spark-style ``part-00000`` works as well as ``train.jsonl.gz``. A suffix that
promises a compression the bytes do not have is reported as a corrupt or
misnamed shard rather than read as garbage.

A shard spec starting with ``pipe:`` (WebDataset's convention) runs a shell
command and reads its output. That is code execution from a string that may
come from a config file, so it is refused unless the reader was built with
``allow_pipe=True``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import zlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from torchseq.errors import (
    ConfigError,
    CorruptShardError,
    ShardNotFoundError,
)
from torchseq.sources.remote import RetryPolicy, open_remote
from torchseq.sources.spec import PIPE_PREFIX as PIPE_PREFIX  # re-exported
from torchseq.sources.spec import is_url

BUFFER_BYTES = 1 << 16

# (magic bytes, compression)
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_SUFFIXES = {".gz": "gzip", ".tgz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}

# Containers people hand to a text-pair reader by mistake: (magic, what it is).
_CONTAINERS = (
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"ARROW1", "an Arrow file"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a .npy array"),
    (b"Obj\x01", "an Avro file"),
    (b"%PDF", "a PDF document"),
)

#: Exceptions a decompressor or parser raises on a truncated or corrupt stream.
STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, OSError, lzma.LZMAError)
zstandard: Any
try:
    import zstandard

    STREAM_ERRORS += (zstandard.ZstdError,)
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None


def _strip_query(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0] if is_url(path) else path


def suffix_compression(path: str) -> str | None:
    """The compression a path's suffix promises, if any."""
    name = _strip_query(path).lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def sniff_compression(head: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def sniff_container(head: bytes) -> str | None:
    """What a decompressed head looks like when it is not text pairs: a tar, Parquet, ..."""
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive"
    for magic, what in _CONTAINERS:
        if head.startswith(magic):
            return what
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (never unpickled)"
    return None


@dataclass(frozen=True)
class ShardOpener:
    """How a reader opens shards: fsspec options for URLs, retries, and the ``pipe:`` opt-in.

    ``storage_options`` are passed to ``fsspec.filesystem(protocol, **options)``
    (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for s3fs). They
    are kept out of ``repr`` because they often hold credentials.
    """

    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    retry: RetryPolicy = RetryPolicy()
    allow_pipe: bool = False

    def open_raw(self, path: str) -> IO[bytes]:
        """Open a shard's bytes as stored (no decompression).

        Raises:
            ShardNotFoundError: a local file or remote object does not exist.
            RemoteAccessError, RemoteError: a remote read failed for good.
            ConfigError: a ``pipe:`` spec without ``allow_pipe=True``.
        """
        if path.startswith(PIPE_PREFIX):
            check_pipe(path, self.allow_pipe)
            return io.BufferedReader(PipeReader(path[len(PIPE_PREFIX):]), BUFFER_BYTES)
        if is_url(path):
            return io.BufferedReader(open_remote(path, self.storage_options, self.retry), BUFFER_BYTES)
        local = path.removeprefix("file://")
        try:
            return open(local, "rb", buffering=BUFFER_BYTES)
        except FileNotFoundError:
            raise ShardNotFoundError(f"{path}: shard not found; check the path and the spec") from None
        except IsADirectoryError:
            raise ShardNotFoundError(
                f"{path}: is a directory, not a shard; use a glob such as {path.rstrip('/')}/*.jsonl.gz"
            ) from None


def check_pipe(path: str, allow_pipe: bool) -> None:
    if not allow_pipe:
        raise ConfigError(
            f"{path}: 'pipe:' specs run a shell command; torchseq refuses them unless the reader "
            "is built with allow_pipe=True (only do that for specs you wrote yourself)"
        )


class PipeReader(io.RawIOBase):
    """The stdout of an opted-in ``pipe:`` command; a non-zero exit is a corrupt shard."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self._process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)  # noqa: S602 - opt-in

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        stdout: Any = self._process.stdout  # a BufferedReader: Popen(stdout=PIPE)
        n: int = stdout.readinto(target)
        if not n:
            code = self._process.wait()
            if code != 0:
                raise CorruptShardError(
                    f"{PIPE_PREFIX}{self.command}: command exited with status {code}; "
                    "the shard's output is incomplete"
                )
        return n

    def close(self) -> None:
        if not self.closed:
            if self._process.poll() is None:
                self._process.kill()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process.wait()
        super().close()


def _decompressor(kind: str, raw: IO[bytes], path: str) -> Any:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if zstandard is None:
        raise ConfigError(f"{path}: reading zstd shards needs zstandard: pip install 'torchseq[zstd]'")
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


class _ReadSome(io.RawIOBase):
    """A decompressor as a raw stream that returns what it has (``read1``), not a full buffer.

    ``BufferedReader`` over a ``GzipFile`` asks for 64 KiB at a time and
    ``GzipFile.read`` insists on filling it, so a stream truncated within
    the first 64 KiB would lose every line before the cut. ``read1`` hands
    over the decompressed bytes as they come; the fault surfaces only when
    nothing more can be decompressed.
    """

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        data = self._inner.read1(len(target))
        n = len(data)
        memoryview(target).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


@contextmanager
def open_shard(path: str, opener: ShardOpener) -> Iterator[Any]:
    """Open a shard, undo its compression, and yield a buffered byte stream.

    Everything opened on the way is closed on exit.

    Raises:
        ShardNotFoundError, RemoteError, ConfigError: see :meth:`ShardOpener.open_raw`.
        CorruptShardError: the suffix promises a compression the bytes do not have.
    """
    with ExitStack() as stack:
        raw: Any = stack.enter_context(opener.open_raw(path))
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
        head = buffered.peek(8)[:8]
        found = sniff_compression(head)
        promised = suffix_compression(path)
        if promised is not None and not head:
            raise CorruptShardError(
                f"{path}: empty file (0 bytes); even an empty {promised} stream has a header "
                "and a trailer, so it was truncated: re-write or re-download the shard"
            )
        if promised is not None and head and found != promised:
            shown = head.hex(" ")
            raise CorruptShardError(
                f"{path}: corrupt compressed stream: the suffix says {promised} but the data "
                f"starts with bytes {shown}; the file is corrupt or misnamed: re-write or rename it"
            )
        if found is None:
            yield buffered
            return
        inner = stack.enter_context(_ReadSome(_decompressor(found, buffered, path)))
        yield stack.enter_context(io.BufferedReader(inner, BUFFER_BYTES))


"""Opening shards: local files directly, URLs through fsspec; decompression by suffix."""

from __future__ import annotations

import gzip
import io
from typing import IO, Any

from torchseq.errors import ConfigError
from torchseq.sources.spec import is_url


def _import_fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "reading URLs needs fsspec: pip install 'torchseq[remote]'"
        ) from exc
    return fsspec


def filesystem_for(url: str) -> tuple[Any, str]:
    fsspec = _import_fsspec()
    protocol = url.split("://", 1)[0]
    return fsspec.filesystem(protocol), protocol


def open_binary(path: str) -> IO[bytes]:
    """Open a shard for binary reading (no decompression)."""
    if is_url(path):
        fsspec = _import_fsspec()
        return fsspec.open(path, "rb").open()  # type: ignore[no-any-return]
    return open(path.removeprefix("file://"), "rb")


class _OwningReader(io.BufferedReader):
    """A buffered reader over a decompressor that also closes the file underneath."""

    def __init__(self, decompressed: Any, underlying: IO[bytes]) -> None:
        super().__init__(decompressed, buffer_size=1 << 16)
        self._underlying = underlying

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._underlying.close()


def open_text_stream(path: str) -> IO[bytes]:
    """Open a shard and undo ``.gz`` / ``.zst`` compression; yields bytes lines when iterated."""
    raw = open_binary(path)
    if path.endswith(".gz"):
        return _OwningReader(gzip.GzipFile(fileobj=raw, mode="rb"), raw)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:
            raw.close()
            raise ConfigError(f"{path}: reading .zst needs zstandard: pip install 'torchseq[zstd]'") from exc
        return _OwningReader(zstandard.ZstdDecompressor().stream_reader(raw), raw)
    return raw

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


class _OwningGzipFile(gzip.GzipFile):
    """A GzipFile that also closes the raw file it decompresses."""

    def close(self) -> None:
        raw = self.fileobj
        try:
            super().close()
        finally:
            if raw is not None:
                raw.close()


def open_text_stream(path: str) -> IO[bytes]:
    """Open a shard and undo ``.gz`` / ``.zst`` compression; yields bytes lines when iterated."""
    raw = open_binary(path)
    if path.endswith(".gz"):
        # GzipFile never closes a fileobj it was given; _OwningGzipFile does.
        return io.BufferedReader(_OwningGzipFile(fileobj=raw, mode="rb"), buffer_size=1 << 16)  # type: ignore[arg-type]
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:
            raw.close()
            raise ConfigError(f"{path}: reading .zst needs zstandard: pip install 'torchseq[zstd]'") from exc
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 16)  # type: ignore[arg-type]
    return raw

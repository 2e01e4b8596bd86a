"""Which reader reads a list of shards: the one rule every tool and command follows."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torchseq.errors import ConfigError
from torchseq.sources.base import ShardSource
from torchseq.sources.jsonl import JsonlSource
from torchseq.sources.spec import is_url
from torchseq.sources.webdataset import WebDatasetSource

READERS: dict[str, type[ShardSource]] = {"jsonl": JsonlSource, "webdataset": WebDatasetSource}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz")


def is_tar_name(path: str) -> bool:
    """Whether a shard's name (without URL query) says it is a tar archive."""
    return path.split("?", 1)[0].lower().endswith(TAR_SUFFIXES)


def reader_for(paths: Sequence[str], reader: str = "auto") -> type[ShardSource]:
    """The source class for ``reader``: ``"jsonl"``, ``"webdataset"``, or ``"auto"``.

    ``"auto"`` reads tar archives (by name: :data:`TAR_SUFFIXES`) and local
    directories (pre-tokenized output) with the WebDataset reader and
    everything else as JSON Lines.

    Raises:
        ConfigError: an unknown reader, or ``"auto"`` over names of both kinds.
    """
    if reader != "auto":
        if reader not in READERS:
            raise ConfigError(f"reader must be one of {['auto', *READERS]}, got {reader!r}")
        return READERS[reader]
    kinds = {
        "webdataset" if is_tar_name(p) or (not is_url(p) and os.path.isdir(p)) else "jsonl" for p in paths
    }
    if len(kinds) > 1:
        raise ConfigError(
            "the shards mix tar archives and other files; give one kind at a time, or name the "
            "reader (--format jsonl / webdataset)"
        )
    return READERS[kinds.pop() if kinds else "jsonl"]

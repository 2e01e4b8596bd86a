"""The manifest of a pre-tokenized directory: ``index.json`` written by ``torchseq pretokenize``.

It lists the directory's shards in order with their record counts, and the
tokenizer facts a reader needs (``pad_id``, ``max_length``, ``vocab_size``,
the tokenizer file's SHA-256). Not to be confused with the record-count
index of :mod:`torchseq.sources.index` (``.torchseq-index.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torchseq.errors import ConfigError

MANIFEST_NAME = "index.json"
MANIFEST_FORMAT = "torchseq.pretokenized"
MANIFEST_VERSION = 1


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a pre-tokenized directory, or ``None`` if it has none.

    Raises:
        ConfigError: an ``index.json`` that is not a torchseq manifest of this version.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{path}: not a torchseq pre-tokenized index (format {manifest.get('format')!r})")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ConfigError(
            f"{path}: index version {manifest.get('version')!r}, this torchseq reads {MANIFEST_VERSION}"
        )
    return manifest


def manifest_shards(directory: str | os.PathLike[str]) -> list[str] | None:
    """Shard paths listed by a directory's manifest, in order; ``None`` without one."""
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    return [str(Path(directory) / shard["path"]) for shard in manifest["shards"]]


def manifest_pad_id(directory: str | os.PathLike[str]) -> int:
    """The pad id recorded in a directory's manifest; 0 without one."""
    manifest = read_manifest(directory)
    return int(manifest["tokenizer"]["pad_id"]) if manifest is not None else 0

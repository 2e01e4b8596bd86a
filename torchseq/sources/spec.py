"""Shard specs: a path, a list, a glob or a brace range; local or fsspec URL."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Sequence

from braceexpand import braceexpand

from torchseq.errors import ConfigError, ShardNotFoundError

ShardSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

_GLOB_CHARS = frozenset("*?[")


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _glob(pattern: str) -> list[str]:
    if is_url(pattern):
        from torchseq.sources.fs import filesystem_for

        fs, protocol = filesystem_for(pattern)
        return sorted(f"{protocol}://{p}" if "://" not in p else p for p in fs.glob(pattern))
    return sorted(globlib.glob(pattern.removeprefix("file://")))


def expand_spec(spec: ShardSpec) -> list[str]:
    """Expand a spec into the ordered list of shard paths.

    Brace ranges (``train-{00000..00007}.jsonl.gz``) expand in order; globs
    expand sorted. Lists keep their order.

    Raises:
        ConfigError: the spec is empty or of the wrong type.
        ShardNotFoundError: a glob matched nothing.
    """
    if isinstance(spec, (str, os.PathLike)):
        items: list[str] = [os.fspath(spec)]
    elif isinstance(spec, Sequence):
        items = [os.fspath(s) for s in spec]
    else:
        raise ConfigError(f"shard spec must be a path, URL or list of them, got {type(spec).__name__}")
    if not items:
        raise ConfigError("shard spec is an empty list: nothing to read")
    shards: list[str] = []
    for item in items:
        for path in braceexpand(item):
            if _GLOB_CHARS & set(path):
                matched = _glob(path)
                if not matched:
                    raise ShardNotFoundError(f"{path}: glob matched no shards")
                shards.extend(matched)
            else:
                shards.append(path)
    return shards

"""Shard specs: a path, a list, a glob or a brace range; local or fsspec URL."""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from braceexpand import braceexpand

from torchseq.errors import ConfigError, ShardNotFoundError
from torchseq.sources.remote import RetryPolicy, glob_remote

ShardSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

_GLOB_CHARS = frozenset("*?[")


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith(("file://", "pipe:"))


def _glob_part(path: str) -> str:
    """The part of a path where glob characters mean a glob (not a URL's query or a command)."""
    if path.startswith("pipe:"):
        return ""
    return path.split("?", 1)[0] if is_url(path) else path


def _glob(pattern: str, storage_options: Mapping[str, Any] | None, retry: Any) -> list[str]:
    if is_url(pattern):
        return glob_remote(pattern, storage_options, retry or RetryPolicy())
    return sorted(globlib.glob(pattern.removeprefix("file://")))


def spec_items(spec: ShardSpec) -> list[str]:
    """The spec as a list of strings, before brace and glob expansion.

    Raises:
        ConfigError: the spec is empty or of the wrong type.
    """
    if isinstance(spec, (str, os.PathLike)):
        items: list[str] = [os.fspath(spec)]
    elif isinstance(spec, Sequence):
        items = [os.fspath(s) for s in spec]
    else:
        raise ConfigError(f"shard spec must be a path, URL or list of them, got {type(spec).__name__}")
    if not items:
        raise ConfigError("shard spec is an empty list: nothing to read; pass at least one path or URL")
    return items


def expand_spec(
    spec: ShardSpec, storage_options: Mapping[str, Any] | None = None, retry: Any = None
) -> list[str]:
    """Expand a spec into the ordered list of shard paths.

    Brace ranges (``train-{00000..00007}.jsonl.gz``) expand in order; globs
    expand sorted. Lists keep their order.

    Raises:
        ConfigError: the spec is empty or of the wrong type.
        ShardNotFoundError: a glob matched nothing.
    """
    shards: list[str] = []
    for item in spec_items(spec):
        for path in braceexpand(item):
            if _GLOB_CHARS & set(_glob_part(path)):
                matched = _glob(path, storage_options, retry)
                if not matched:
                    raise ShardNotFoundError(f"{path}: glob matched no shards")
                shards.extend(matched)
            else:
                shards.append(path)
    return shards

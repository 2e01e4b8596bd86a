"""Shard specs: a path, a list, a glob or a brace range; local or fsspec URL.

Only a literal spec item that starts with ``pipe:`` is a command (its brace
ranges expand into one command per shard, WebDataset's convention). A glob
match or a directory listing that names a file ``pipe:...`` is that file, and
is returned as ``./pipe:...``; a brace range that makes a ``pipe:`` item out of
a literal that is not one is refused.
"""

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
PIPE_PREFIX = "pipe:"


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith(("file://", PIPE_PREFIX))


def local_file(path: str) -> str:
    """A path found on disk (a glob match, a directory listing), never to be taken for a ``pipe:`` spec."""
    return f"./{path}" if path.startswith(PIPE_PREFIX) else path


def _glob_part(path: str) -> str:
    """The part of a path where glob characters mean a glob (not a URL's query or a command)."""
    return path.split("?", 1)[0] if is_url(path) else path


def _glob(pattern: str, storage_options: Mapping[str, Any] | None, retry: Any) -> list[str]:
    if is_url(pattern):
        return glob_remote(pattern, storage_options, retry or RetryPolicy())
    return sorted(local_file(p) for p in globlib.glob(pattern.removeprefix("file://")))


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
    expand sorted. Lists keep their order. A ``pipe:`` item is a command:
    its braces expand, glob characters in it are the shell's.

    Raises:
        ConfigError: the spec is empty or of the wrong type, or a brace range
            made a ``pipe:`` item out of one that is not.
        ShardNotFoundError: a glob matched nothing.
    """
    shards: list[str] = []
    for item in spec_items(spec):
        command = item.startswith(PIPE_PREFIX)
        for path in braceexpand(item):
            if command:
                shards.append(path)
            elif path.startswith(PIPE_PREFIX):
                raise ConfigError(
                    f"{path}: a brace expansion made a 'pipe:' spec out of {item!r}; only a spec item that "
                    "starts with 'pipe:' runs a command: write each command as its own item"
                )
            elif _GLOB_CHARS & set(_glob_part(path)):
                matched = _glob(path, storage_options, retry)
                if not matched:
                    raise ShardNotFoundError(f"{path}: glob matched no shards")
                shards.extend(matched)
            else:
                shards.append(path)
    return shards

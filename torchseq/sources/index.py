"""The record-count index: how many records each shard holds, counted once.

Equal batches per rank and ``len(pipe)`` need per-shard record counts that
every process knows alike. Counting means reading a shard to the end, so the
counts are cached in a small JSON file per shard directory (where, and what
an entry holds: :mod:`torchseq.sources.index_store`), keyed by the shard's
size and modification and status-change times (for remote shards its ETag or
Last-Modified time and size) and by the reader (a ``.jsonl`` line and a tar
sample are different items), so a changed shard is counted again. HTTP
shards on servers that cannot list a directory are keyed by a size lookup
each, and cached like the others.

Counting reads each item without decoding it. Under ``on_error="raise"`` a
shard that cannot be read raises; otherwise the count is what the reader
will deliver from it -- but a count that ended in a fault is never kept as
the shard's count: it plans only the epoch it was counted for (so that every
process planning that epoch agrees), and the shard is counted again for the
next one. ``torchseq index SPEC`` builds the index ahead of training.

Concurrent builders (every worker of every rank may start at once) take a
file lock, so one process counts and the others read its result.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from torchseq.errors import IndexWarning
from torchseq.sources.base import ShardFault, ShardSource
from torchseq.sources.index_store import (
    INDEX_NAME,
    INDEX_VERSION,
    Entry,
    cache_dir,
    directory_keys,
    index_files,
    known_entries,
    locked,
    settled,
    split,
    write_entries,
)

__all__ = ["INDEX_NAME", "INDEX_VERSION", "cache_dir", "count_items", "index_paths", "shard_counts"]


def count_items(source: ShardSource, path: str) -> tuple[int, ShardFault | None]:
    """Read one shard to the end: ``(items its reader yields, the fault that ended it early)``.

    Raises:
        DataError, ShardNotFoundError, RemoteError: under ``on_error="raise"``,
            the shard cannot be read to the end.
    """
    count = 0
    try:
        for _ in source.items(path, 0):
            count += 1
    except ShardFault as fault:
        if source.on_error == "raise":
            raise fault.error from None
        return count, fault
    return count, None


def shard_counts(
    source: ShardSource,
    shards: Sequence[str] | None = None,
    *,
    epoch: int | None = None,
    settle: bool = False,
    rebuild: bool = False,
) -> list[int]:
    """Records per shard of ``source`` (spec order), from the index; counts what is missing or stale.

    Args:
        source: the reader; its ``items`` define what one record is.
        shards: the expanded spec (expanded again if not given).
        epoch: the epoch these counts plan (``None``: not planning one, e.g.
            ``torchseq index``). Counts planned for it are used; a count that
            ends in a fault is kept for it alone.
        settle: an iteration of ``epoch`` starts: counts planned for earlier
            epochs are dropped from the index.
        rebuild: count every shard again.

    Raises:
        ShardNotFoundError, DataError: under ``on_error="raise"``, a shard that
            cannot be counted.
    """
    paths = list(shards) if shards is not None else source.shard_list()
    groups: dict[str, list[tuple[int, str]]] = {}
    for position, path in enumerate(paths):
        directory, name = split(path)
        groups.setdefault(directory, []).append((position, name))
    counts = [0] * len(paths)
    for directory, members in groups.items():
        counter = _DirectoryCount(source, paths, directory, members, epoch)
        for position, count in counter.counts(settle, rebuild):
            counts[position] = count
    return counts


class _DirectoryCount:
    """The counts of one directory's shards: looked up, then counted under the lock where missing."""

    def __init__(
        self, source: ShardSource, paths: list[str], directory: str, members: list[tuple[int, str]], epoch: int | None
    ) -> None:
        self.source, self.paths, self.directory, self.members, self.epoch = source, paths, directory, members, epoch
        self.reader = type(source).__name__
        self.keys, self.present = directory_keys(directory, [name for _, name in members], source.options)
        self.files = index_files(directory, source.options.index_dir)

    def counts(self, settle: bool, rebuild: bool) -> list[tuple[int, int]]:
        found, missing, stale = self._known(settle, rebuild)
        if not missing and not stale:
            return found
        with locked(self.directory):
            if not rebuild:  # another process may have counted meanwhile
                found, missing, stale = self._known(settle, rebuild)
            new: dict[str, Entry] = {name: settled(entry) for name, entry in stale.items()}
            try:
                for position, name in missing:
                    found.append((position, self._count(position, name, new)))
            finally:  # keep what was counted even when a later shard fails
                if new:
                    write_entries(self.files, self.directory, new, self.present)
        return found

    def _known(
        self, settle: bool, rebuild: bool
    ) -> tuple[list[tuple[int, int]], list[tuple[int, str]], dict[str, Entry]]:
        """``(found counts, missing (position, name), entries whose planned epoch is over)``."""
        entries, self.problems = known_entries(self.directory, self.files)
        found, missing, stale = [], [], {}
        for position, name in self.members:
            key = self.keys.get(name)
            entry = entries.get(name)
            if rebuild or key is None or entry is None or (entry.key, entry.reader) != (key, self.reader):
                missing.append((position, name))
                continue
            count = entry.count_for(self.epoch)
            if count is None:
                missing.append((position, name))
                continue
            found.append((position, count))
            planned = entry.planned
            if settle and self.epoch is not None and planned is not None and planned[0] < self.epoch:
                stale[name] = entry
        return found, missing, stale

    def _count(self, position: int, name: str, new: dict[str, Entry]) -> int:
        """Count one shard and note its entry in ``new`` (a fault is kept for this epoch only)."""
        for problem in self.problems.pop("", []):  # a problem of the whole file is said once
            warnings.warn(f"{problem}; the record-count index is not trusted: its shards are counted again",
                          IndexWarning, stacklevel=2)
        for problem in self.problems.get(name, []):
            warnings.warn(f"{problem}; the record-count index entry for {name} is not trusted: the shard is "
                          "counted again", IndexWarning, stacklevel=2)
        count, fault = count_items(self.source, self.paths[position])
        key = self.keys.get(name)
        if key is not None:  # a shard without a key (missing, no size lookup) is counted, never cached
            if fault is None:
                new[name] = Entry(key, self.reader, count)
            elif self.epoch is not None:
                new[name] = Entry(key, self.reader, None, (self.epoch, count))
        return count


def index_paths(source: ShardSource, shards: Sequence[str] | None = None) -> list[str]:
    """The index files currently holding entries for ``source``'s shards."""
    paths = list(shards) if shards is not None else source.shard_list()
    out: list[str] = []
    for directory in dict.fromkeys(split(p)[0] for p in paths):
        for candidate in index_files(directory, source.options.index_dir):
            if os.path.exists(candidate) and candidate not in out:
                out.append(candidate)
    return out

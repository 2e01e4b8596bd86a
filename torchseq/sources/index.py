"""The record-count index: how many records each shard holds, counted once.

Equal batches per rank and ``len(pipe)`` need per-shard record counts that
every process knows alike. Counting means reading a shard to the end, so the
counts are cached in a small JSON file per shard directory:

* beside the shards (``DIR/.torchseq-index.json``) when that directory is a
  local one we may write to (a directory without any write permission bit
  counts as read-only, for root too);
* else in the cache directory (``$TORCHSEQ_CACHE_DIR``, default
  ``$XDG_CACHE_HOME/torchseq`` or ``~/.cache/torchseq``), one file per shard
  directory (remote URLs always go there);
* only in ``$TORCHSEQ_INDEX_DIR`` when that is set (never beside the shards).

An entry is keyed by the shard's size and modification time (for remote
shards the ETag when the store gives one), and by the reader (a ``.jsonl``
line and a tar sample are different items), so a changed shard is counted
again. Counting reads each item without decoding it; under
``on_error="raise"`` a shard that cannot be read raises, otherwise the count
is what the reader will deliver from it. ``torchseq index SPEC`` builds the
index ahead of training.

Concurrent builders (every worker of every rank may start at once) take a
file lock, so one process counts and the others read its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from torchseq.errors import RemoteError
from torchseq.sources.base import ShardFault, ShardSource
from torchseq.sources.remote import filesystem_for, with_retry
from torchseq.sources.spec import is_url

INDEX_NAME = ".torchseq-index.json"
INDEX_VERSION = 1

logger = logging.getLogger(__name__)

# (directory, name, key, reader) -> records: counts this process made or read.
_COUNTED: dict[tuple[str, str, str, str], int] = {}

# index file path -> (its stat stamp, parsed entries): workers of later epochs
# and len() skip re-parsing an unchanged file.
_PARSED: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def cache_dir() -> str:
    """Where indexes of read-only and remote shard directories live."""
    explicit = os.environ.get("TORCHSEQ_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchseq")


def _split(path: str) -> tuple[str, str]:
    """``(directory, name)``; URLs keep their scheme."""
    path = path.removeprefix("file://")
    if is_url(path):
        directory, _, name = path.rpartition("/")
        return directory, name
    path = os.path.abspath(path)
    return os.path.dirname(path), os.path.basename(path)


def _digest(directory: str) -> str:
    return hashlib.blake2b(directory.encode(), digest_size=12).hexdigest()


def _cached_path(directory: str) -> str:
    return os.path.join(cache_dir(), "index", f"{_digest(directory)}.json")


def _writable(directory: str) -> bool:
    """We may add files here: permitted, and the mode has some write bit.

    The mode check keeps root (whom permissions do not stop) out of
    directories published read-only.
    """
    try:
        return os.access(directory, os.W_OK) and bool(os.stat(directory).st_mode & 0o222)
    except OSError:
        return False


def _candidates(directory: str) -> list[str]:
    """Index files that may hold entries for ``directory``, preferred first."""
    explicit = os.environ.get("TORCHSEQ_INDEX_DIR")
    if explicit:
        return [os.path.join(explicit, f"{_digest(directory)}.json")]
    if is_url(directory):
        return [_cached_path(directory)]
    return [os.path.join(directory, INDEX_NAME), _cached_path(directory)]


def _listing(directory: str, source: ShardSource) -> dict[str, str]:
    """``name -> key`` for the files of a directory, from one listing call."""
    if not is_url(directory):
        keys = {}
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file():
                    stat = entry.stat()
                    keys[entry.name] = f"{stat.st_size}:{stat.st_mtime_ns}"
        return keys
    options = source.options
    fs = filesystem_for(directory, options.storage_options)
    listing = with_retry(directory, "listing", options.retry, lambda: fs.ls(directory, detail=True))
    keys = {}
    for info in listing:
        if info.get("type") == "directory":
            continue
        name = str(info["name"]).rstrip("/").rpartition("/")[2]
        stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get(
            "mtime") or info.get("created") or ""
        keys[name] = f"{info.get('size')}:{stamp}"
    return keys


def _read(path: str) -> dict[str, Any]:
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    # os.replace gives every written index a new inode: a stale parse is never reused.
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}  # unreadable or half-written by a crashed run: count again
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
        return {}
    entries = data.get("shards", {})
    _PARSED[path] = (stamp, entries)
    return entries  # type: ignore[no-any-return]


def _write(paths: list[str], directory: str, new: dict[str, Any], present: set[str]) -> str | None:
    """Merge ``new`` entries into the first index file we may write, atomically.

    Entries of files no longer in the directory (``present``) are pruned.
    Returns the file written, or ``None`` when no place accepts it (the
    counts then live in this process only).
    """
    last_error: OSError | None = None
    for path in paths:
        if os.path.basename(path) == INDEX_NAME and not _writable(os.path.dirname(path)):
            continue
        entries = {k: v for k, v in _read(path).items() if k in present}
        entries.update(new)
        payload = json.dumps(
            {"version": INDEX_VERSION, "directory": directory, "shards": entries},
            indent=0, sort_keys=True,
        )
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".torchseq-index-", dir=os.path.dirname(path))
        except OSError as exc:  # read-only directory: try the next place
            last_error = exc
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; other users read shards too
            os.replace(tmp, path)
        except OSError as exc:
            last_error = exc
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            continue
        return path
    logger.warning("cannot write a record-count index for %s: %s", directory, last_error)
    return None


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """An exclusive lock per shard directory (none where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    name = f"{_digest(directory)}.lock"
    try:
        lock_dir = os.path.join(cache_dir(), "locks")
        os.makedirs(lock_dir, exist_ok=True)
        handle = open(os.path.join(lock_dir, name), "a")
    except OSError:  # no writable cache: a per-user lock in the temp dir
        handle = open(os.path.join(tempfile.gettempdir(), f"torchseq-{os.getuid()}-{name}"), "a")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def count_items(source: ShardSource, path: str) -> int:
    """Read one shard to the end and count the items its reader yields.

    A shard that cannot be read on raises under ``on_error="raise"``; otherwise
    the items before the fault are what the reader will deliver.
    """
    count = 0
    try:
        for _ in source.items(path, 0):
            count += 1
    except ShardFault as fault:
        if source.on_error == "raise":
            raise fault.error from None
    return count


def _lookup(
    entries: dict[str, Any], name: str, key: str | None, reader: str
) -> int | None:
    entry = entries.get(name)
    if entry and key is not None and entry.get("key") == key and entry.get("reader") == reader:
        return int(entry["records"])
    return None


def shard_counts(source: ShardSource, shards: Sequence[str] | None = None, *, rebuild: bool = False) -> list[int]:
    """Records per shard of ``source`` (spec order), from the index; counts what is missing or stale.

    Args:
        source: the reader; its ``items`` define what one record is.
        shards: the expanded spec (expanded again if not given).
        rebuild: count every shard again.

    Raises:
        ShardNotFoundError, DataError: under ``on_error="raise"``, a shard that
            cannot be counted.
    """
    paths = list(shards) if shards is not None else source.shard_list()
    reader = type(source).__name__
    groups: dict[str, list[tuple[int, str]]] = {}
    for position, path in enumerate(paths):
        directory, name = _split(path)
        groups.setdefault(directory, []).append((position, name))
    counts = [0] * len(paths)
    for directory, members in groups.items():
        for position, count in _directory_counts(source, paths, directory, members, reader, rebuild):
            counts[position] = count
    return counts


def _directory_counts(
    source: ShardSource,
    paths: list[str],
    directory: str,
    members: list[tuple[int, str]],
    reader: str,
    rebuild: bool,
) -> list[tuple[int, int]]:
    try:
        keys: dict[str, str] = _listing(directory, source)
    except (FileNotFoundError, NotADirectoryError, RemoteError):
        keys = {}  # no listing (e.g. an HTTP server, or list permission denied): counts are not cached
    candidates = _candidates(directory)

    def known() -> tuple[list[tuple[int, int]], list[tuple[int, str]]]:
        found, missing = [], []
        merged: dict[str, Any] = {}
        for path in reversed(candidates):  # preferred file wins
            merged.update(_read(path))
        for position, name in members:
            key = keys.get(name)
            count = None
            if not rebuild and key is not None:
                count = _COUNTED.get((directory, name, key, reader))
                if count is None:
                    count = _lookup(merged, name, key, reader)
            if count is None:
                missing.append((position, name))
            else:
                found.append((position, count))
        return found, missing

    found, missing = known()
    if not missing:
        return found
    with _locked(directory):
        if not rebuild:
            found, missing = known()  # another process may have counted meanwhile
        if not missing:
            return found
        new: dict[str, Any] = {}
        try:
            for position, name in missing:
                count = count_items(source, paths[position])
                found.append((position, count))
                if name in keys:  # a missing shard (skipped) is counted, never cached
                    new[name] = {"key": keys[name], "reader": reader, "records": count}
                    _COUNTED[(directory, name, keys[name], reader)] = count
        finally:  # keep what was counted even when a later shard fails
            if new:
                _write(candidates, directory, new, set(keys))
    return found


def index_paths(source: ShardSource, shards: Sequence[str] | None = None) -> list[str]:
    """The index files currently holding entries for ``source``'s shards."""
    paths = list(shards) if shards is not None else source.shard_list()
    out: list[str] = []
    for directory in dict.fromkeys(_split(p)[0] for p in paths):
        for candidate in _candidates(directory):
            if os.path.exists(candidate) and candidate not in out:
                out.append(candidate)
    return out

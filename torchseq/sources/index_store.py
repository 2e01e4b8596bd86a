"""Record-count index files: where they live, what an entry holds, reading, writing and correcting them.

Where (the first that applies):

* the reader's ``index_dir=`` option, else ``$TORCHSEQ_INDEX_DIR``: only
  there, one file per shard directory (never beside the shards);
* for a local directory we may write to, beside the shards
  (``DIR/.torchseq-index.json``), falling back to the cache directory. A
  directory without any write permission bit counts as read-only (for root
  too), and so does anything inside the installed torchseq package or a
  ``site-packages`` directory: iterating a bundled sample never writes into
  an installed distribution;
* else (remote URLs, protected directories) in the cache directory
  (``$TORCHSEQ_CACHE_DIR``, default ``$XDG_CACHE_HOME/torchseq`` or
  ``~/.cache/torchseq``).

An entry is trusted only if it is well formed and its checksum matches (an
edited or corrupt entry is counted again, with an
:class:`~torchseq.errors.IndexWarning`), and only for the shard's current
*key*: size, modification and status-change time for local files (a rewrite
that keeps size and mtime still changes ``st_ctime``), the ETag or
Last-Modified time and the size for remote objects.

``records`` is a count read to the end without a fault, or ``null``.
``planned: [epoch, n]`` says that ``epoch`` was planned with ``n`` records:
every process that plans that epoch (any rank, any worker, a resume) must
use the same count, or ranks would get different numbers of batches. It is
written for a count that ended in a fault (which is never kept as the
shard's count: any other epoch counts the shard again) and when reading
found a count wrong mid-epoch (the corrected count applies from the next
epoch). Planning an iteration of a later epoch drops it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import site
import sysconfig
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torchseq.errors import RemoteError
from torchseq.sources.options import ReaderOptions
from torchseq.sources.remote import filesystem_for, with_retry
from torchseq.sources.spec import is_url

INDEX_NAME = ".torchseq-index.json"
INDEX_VERSION = 2

logger = logging.getLogger(__name__)

# Index file path -> (its stat stamp, parsed entries, problems): unchanged files are not parsed again.
_PARSED: dict[str, tuple[tuple[int, int, int], dict[str, Entry], dict[str, str]]] = {}

# directory -> entries this process could not write anywhere (they live in this process only).
_UNWRITTEN: dict[str, dict[str, Entry]] = {}

#: Parallel size lookups (HEAD requests) for remote shards a listing does not describe.
INFO_THREADS = 16


@dataclass(frozen=True)
class Entry:
    """What the index knows of one shard (see the module docs)."""

    key: str
    reader: str
    records: int | None
    planned: tuple[int, int] | None = None

    def count_for(self, epoch: int | None) -> int | None:
        """The count to plan ``epoch`` with (``None``: count the shard)."""
        if epoch is not None and self.planned is not None and self.planned[0] == epoch:
            return self.planned[1]
        return self.records

    def to_json(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "reader": self.reader, "records": self.records}
        if self.planned is not None:
            out["planned"] = list(self.planned)
        out["check"] = _checksum(name, self.key, self.reader, self.records, self.planned)
        return out


def _checksum(name: str, key: str, reader: str, records: int | None, planned: tuple[int, int] | None) -> str:
    text = json.dumps([name, key, reader, records, list(planned) if planned else None])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def parse_entry(name: str, raw: Any) -> Entry | str:
    """The entry, or what is wrong with it."""
    if not isinstance(raw, dict):
        return f"an entry must be an object, got {type(raw).__name__}"
    key, reader, records, planned = raw.get("key"), raw.get("reader"), raw.get("records"), raw.get("planned")
    if not isinstance(key, str) or not isinstance(reader, str):
        return "'key' and 'reader' must be strings"
    if records is not None and not _count(records):
        return f"'records' must be an integer >= 0 or null, got {records!r}"
    if planned is not None and not (isinstance(planned, list) and len(planned) == 2 and all(map(_count, planned))):
        return f"'planned' must be [epoch, records], got {planned!r}"
    pair = (planned[0], planned[1]) if planned is not None else None
    if raw.get("check") != _checksum(name, key, reader, records, pair):
        return "its checksum does not match (edited by hand, or corrupt)"
    return Entry(key, reader, records, pair)


# ----------------------------------------------------------------- where
def cache_dir() -> str:
    """Where indexes of read-only, protected and remote shard directories live."""
    explicit = os.environ.get("TORCHSEQ_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torchseq")


def split(path: str) -> tuple[str, str]:
    """``(directory, name)``; URLs keep their scheme."""
    path = path.removeprefix("file://")
    if is_url(path):
        directory, _, name = path.rpartition("/")
        return directory, name
    path = os.path.abspath(path)
    return os.path.dirname(path), os.path.basename(path)


def _digest(directory: str) -> str:
    return hashlib.blake2b(directory.encode(), digest_size=12).hexdigest()


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    """The torchseq package and every ``site-packages`` directory: never written into."""
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    roots.update(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    return tuple(sorted({os.path.realpath(r) for r in roots}))


def protected(directory: str) -> bool:
    """Inside the installed torchseq package or a ``site-packages`` directory."""
    real = os.path.realpath(directory)
    return any(real == root or real.startswith(root + os.sep) for root in _installed_roots())


def _writable(directory: str) -> bool:
    """We may add files here: permitted, and the mode has some write bit (root obeys that too)."""
    try:
        return os.access(directory, os.W_OK) and bool(os.stat(directory).st_mode & 0o222)
    except OSError:
        return False


def index_files(directory: str, index_dir: str | None = None) -> list[str]:
    """Index files that may hold entries for ``directory``, preferred first."""
    explicit = index_dir or os.environ.get("TORCHSEQ_INDEX_DIR")
    if explicit:
        return [os.path.join(explicit, f"{_digest(directory)}.json")]
    cached = os.path.join(cache_dir(), "index", f"{_digest(directory)}.json")
    if is_url(directory) or protected(directory):
        return [cached]
    return [os.path.join(directory, INDEX_NAME), cached]


# ----------------------------------------------------------------- keys
def local_key(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def remote_key(info: Mapping[str, Any]) -> str | None:
    """``size:stamp`` from a listing or ``info`` answer; ``None`` when it describes nothing."""
    size = info.get("size")
    stamp = (info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("Last-Modified")
             or info.get("mtime") or info.get("created") or "")
    if size is None and not stamp:
        return None
    return f"{size}:{stamp}"


def _remote_info_key(url: str, options: ReaderOptions, fs: Any) -> str | None:
    try:
        info = with_retry(url, "HEAD (size lookup)", options.retry, lambda: fs.info(url))
    except (FileNotFoundError, RemoteError):
        return None  # missing or failing: counted (and reported by the reader), never cached
    return remote_key(info) if isinstance(info, Mapping) else None


def directory_keys(directory: str, names: list[str], options: ReaderOptions) -> tuple[dict[str, str], set[str] | None]:
    """``(name -> key, names present in the directory)`` from one listing.

    The present names are ``None`` when the directory cannot be listed (an
    HTTP server): remote shards the listing does not describe get their key
    from a size lookup each.
    """
    if not is_url(directory):
        keys: dict[str, str] = {}
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_file():
                        keys[entry.name] = local_key(entry.stat())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return {}, set()
        return keys, set(keys)
    fs = filesystem_for(directory, options.storage_options)
    present: set[str] | None = None
    try:
        listing = with_retry(directory, "listing", options.retry, lambda: fs.ls(directory, detail=True))
    except (FileNotFoundError, NotADirectoryError, RemoteError):
        listing = []  # no listing (an HTTP server, or list permission denied)
    else:
        present = set()
    keys = {}
    for info in listing:
        if info.get("type") == "directory":
            continue
        name = str(info["name"]).rstrip("/").rpartition("/")[2]
        if present is not None:
            present.add(name)
        key = remote_key(info)
        if key is not None:
            keys[name] = key
    unknown = [name for name in dict.fromkeys(names) if name not in keys]
    if unknown:
        with concurrent.futures.ThreadPoolExecutor(min(INFO_THREADS, len(unknown))) as pool:
            found = pool.map(lambda name: _remote_info_key(f"{directory}/{name}", options, fs), unknown)
            keys.update((name, key) for name, key in zip(unknown, found, strict=True) if key is not None)
    return keys, present


def shard_key(path: str, options: ReaderOptions) -> str | None:
    """The current key of one shard (``None`` if it cannot be looked up)."""
    path = path.removeprefix("file://")
    if is_url(path):
        return _remote_info_key(path, options, filesystem_for(path, options.storage_options))
    try:
        return local_key(os.stat(path))
    except OSError:
        return None


# ----------------------------------------------------------------- reading and writing
def read_file(path: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """``(valid entries, name -> what is wrong)`` of one index file; ``""`` names a problem of the whole file.

    A missing file, or one of another format version, holds nothing (and is
    no problem).
    """
    try:
        stat = os.stat(path)
    except OSError:
        return {}, {}
    # os.replace gives every written index a new inode: a stale parse is never reused.
    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1], cached[2]
    entries: dict[str, Entry] = {}
    problems: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError:
        return {}, {}
    except ValueError as exc:
        problems[""] = f"not JSON ({exc})"
    else:
        shards = data.get("shards") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            problems[""] = f"not a JSON object but {type(data).__name__}"
        elif data.get("version") != INDEX_VERSION:
            pass  # another format version: counted again and replaced
        elif not isinstance(shards, dict):
            problems[""] = f"'shards' must be an object, got {type(shards).__name__}"
        else:
            for name, raw in shards.items():
                parsed = parse_entry(name, raw)
                if isinstance(parsed, Entry):
                    entries[name] = parsed
                else:
                    problems[name] = parsed
    _PARSED[path] = (stamp, entries, problems)
    return entries, problems


def known_entries(directory: str, paths: list[str]) -> tuple[dict[str, Entry], dict[str, list[str]]]:
    """Entries for ``directory`` from its index files (preferred wins), and the problems found by name."""
    merged: dict[str, Entry] = dict(_UNWRITTEN.get(directory, {}))
    problems: dict[str, list[str]] = {}
    for path in reversed(paths):
        entries, found = read_file(path)
        merged.update(entries)
        for name, what in found.items():
            problems.setdefault(name, []).append(f"{path}: {what}")
    return merged, problems


def write_entries(paths: list[str], directory: str, new: dict[str, Entry], present: set[str] | None) -> str | None:
    """Merge ``new`` entries into the first index file we may write, atomically.

    Entries of files no longer in the directory (``present``, when known)
    are pruned, and so are invalid ones. Returns the file written, or
    ``None`` when no place accepts it (the counts then live in this process).
    """
    last_error: OSError | None = None
    for path in paths:
        if os.path.basename(path) == INDEX_NAME and not _writable(os.path.dirname(path)):
            continue
        entries = {k: v for k, v in read_file(path)[0].items() if present is None or k in present}
        entries.update(new)
        payload = json.dumps(
            {"version": INDEX_VERSION, "directory": directory,
             "shards": {name: entry.to_json(name) for name, entry in entries.items()}},
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
    _UNWRITTEN.setdefault(directory, {}).update(new)
    return None


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
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


def correct(options: ReaderOptions, reader: str, path: str, epoch: int, planned: int, actual: int | None) -> None:
    """Reading found that ``path`` holds ``actual`` records (``None``: unknown, it failed), not ``planned``.

    The entry keeps ``epoch`` planned with ``planned`` (processes that plan
    it later must agree) and holds ``actual`` for the epochs after; an
    unknown count makes the next epoch count the shard again.
    """
    directory, name = split(path)
    key = shard_key(path, options)
    if key is None:
        return
    paths = index_files(directory, options.index_dir)
    with locked(directory):
        current = known_entries(directory, paths)[0].get(name)
        keep = current.planned if current is not None and current.planned and current.planned[0] == epoch else None
        entry = Entry(key, reader, actual, keep or (epoch, planned))
        if current != entry:
            write_entries(paths, directory, {name: entry}, None)


def settled(entry: Entry) -> Entry:
    """``entry`` without its planned epoch (planning a later epoch no longer needs it)."""
    return replace(entry, planned=None)

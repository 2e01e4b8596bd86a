"""What a checkpoint records of each shard: its path and a stamp of its version, without reading it.

A local shard's stamp is its size and modification time (``os.stat``); a
remote one's its size and ETag (else its modification time), from one
listing of its directory, or one ``info`` request where the store lists
nothing (plain HTTP). A ``pipe:`` command has no version to stamp. A shard
that cannot be looked at is stamped so (``missing``, ``unreachable``): the
reading loop reports it as it would without a checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

from torchseq.errors import StateError, TorchseqError
from torchseq.sources.fs import PIPE_PREFIX
from torchseq.sources.options import ReaderOptions
from torchseq.sources.remote import filesystem_for, with_retry
from torchseq.sources.spec import is_url
from torchseq.state import show

_VERSION_KEYS = (("ETag", "ETag"), ("etag", "ETag"), ("md5Hash", "md5"), ("LastModified", "modified"),
                 ("mtime", "modified"), ("updated", "modified"), ("created", "created"))


def _remote_stamp(info: dict[str, Any]) -> str:
    size = info.get("size")
    for key, label in _VERSION_KEYS:
        if info.get(key):
            return f"{size} bytes, {label} {info[key]}"
    return f"{size} bytes"


def _local_stamp(path: str) -> str:
    try:
        stat = os.stat(path.removeprefix("file://"))
    except OSError:
        return "missing"
    return f"{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}"


def shard_stamps(shards: Sequence[str], options: ReaderOptions) -> list[str]:
    """One stamp per shard, in order (see the module docs)."""
    stamps = [""] * len(shards)
    remote: dict[str, list[int]] = {}
    for position, path in enumerate(shards):
        if path.startswith(PIPE_PREFIX):
            stamps[position] = "a command"
        elif is_url(path):
            remote.setdefault(path.rsplit("/", 1)[0], []).append(position)
        else:
            stamps[position] = _local_stamp(path)
    for directory, positions in remote.items():
        fs = filesystem_for(directory, options.storage_options)
        try:
            listing = with_retry(directory, "listing", options.retry, functools.partial(fs.ls, directory, detail=True))
        except (TorchseqError, OSError):
            listing = []  # no listing (an HTTP server): one request per shard
        found = {str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]: info
                 for info in listing if isinstance(info, dict)}
        for position in positions:
            url = shards[position]
            info = found.get(url.rsplit("/", 1)[-1])
            if info is None:
                try:
                    info = with_retry(url, "looking up", options.retry, functools.partial(fs.info, url))
                except (TorchseqError, OSError):
                    stamps[position] = "unreachable"
                    continue
            stamps[position] = _remote_stamp(info)
    return stamps


def _stamp(value: Any) -> str:
    """A stamp as written (a tampered one: its bounded ``repr``)."""
    return value if type(value) is str and len(value) <= 200 else show(value)


def check_shard_list(saved: Any, now: str) -> None:
    """The checkpoint's shard list (``shards``, as JSON) is the pipeline's, shard by shard.

    Raises:
        StateError: naming the first shard that differs (order, a shard moved, added or rewritten).
    """
    try:
        listed = json.loads(saved) if type(saved) is str else None
    except ValueError:
        listed = None
    if type(listed) is not list or any(type(e) is not list or len(e) != 2 for e in listed):
        raise StateError(f"shards: checkpoint has {show(saved)}, pipeline needs the JSON list of "
                         "[path, stamp] pairs it wrote")
    ours = json.loads(now)
    if len(listed) != len(ours):
        raise StateError(f"shards: checkpoint lists {len(listed)} shards, pipeline has {len(ours)}")
    for position, (theirs, mine) in enumerate(zip(listed, ours, strict=True)):
        if theirs != mine:
            raise StateError(
                f"shards[{position}]: checkpoint has {show(theirs[0])} ({_stamp(theirs[1])}), pipeline has "
                f"{show(mine[0])} ({mine[1]}); the shard list changed (its order, or a shard moved, added or "
                "rewritten): resume with the shards the checkpoint was taken on, or start the epoch afresh"
            )

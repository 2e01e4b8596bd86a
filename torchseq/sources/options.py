"""Reader options: every keyword ``read_jsonl`` / ``read_webdataset`` take, written and validated once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchseq.errors import (
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MAX_ERRORS,
    ConfigError,
    OnError,
    check_on_error,
    check_tolerance,
)
from torchseq.records import check_fields
from torchseq.sources.fs import ShardOpener
from torchseq.sources.remote import RetryPolicy

DEFAULT_MAX_RECORD_BYTES = 64 << 20


@dataclass(frozen=True)
class ReaderOptions:
    """How a reader reads its shards. Validated when built (before any shard is touched).

    Attributes:
        fields: map record fields to source keys, e.g. ``{"anchor": "question",
            "positive": "answer"}``; needed only for dicts of no known format.
        on_error: ``"raise"`` (default), ``"skip"`` or ``"warn"`` for bad lines and shards;
            skipped inputs are counted by reason in ``Pipeline.stats()``.
        max_record_bytes: a longer line (or tar sample, all members together)
            is bad input, and is never read into memory whole.
        max_errors: with skip/warn, stop when a worker skipped more inputs than
            this (default 1,000; ``None``: no limit).
        max_error_rate: with skip/warn, stop when a worker skipped more than this
            fraction of its inputs (default 0.01; ``None``: no limit), judged once
            it has seen 1,000 inputs.
        storage_options: passed to ``fsspec.filesystem(protocol, **storage_options)``
            for URLs, e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3.
        retry: how remote reads retry transient faults (:class:`~torchseq.RetryPolicy`).
        allow_pipe: allow ``pipe:COMMAND`` specs, which run a shell command.
        name: label of this source in ``stats().sources``.
        index_dir: the directory that holds the record-count index of these
            shards (one file per shard directory); default ``$TORCHSEQ_INDEX_DIR``,
            else beside the shards or in the cache directory (see
            :mod:`torchseq.sources.index_store`).

    Raises:
        ConfigError: an option is invalid.
    """

    fields: Mapping[str, str] | None = None
    on_error: OnError = "raise"
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_errors: int | None = DEFAULT_MAX_ERRORS
    max_error_rate: float | None = DEFAULT_MAX_ERROR_RATE
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_pipe: bool = False
    name: str | None = None
    index_dir: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "fields", check_fields(self.fields))
        set_(self, "on_error", check_on_error(self.on_error))
        if type(self.max_record_bytes) is not int or self.max_record_bytes < 1:
            raise ConfigError(f"max_record_bytes must be an int >= 1, got {self.max_record_bytes!r}")
        check_tolerance(self.max_errors, self.max_error_rate)
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ConfigError(f"storage_options must be a dict, got {type(self.storage_options).__name__}")
        set_(self, "storage_options", dict(self.storage_options) if self.storage_options else None)
        if self.index_dir is not None:
            path = os.fspath(self.index_dir) if isinstance(self.index_dir, (str, os.PathLike)) else None
            if not isinstance(path, str) or not path:
                raise ConfigError(f"index_dir must be a path (str or os.PathLike), got {self.index_dir!r}")
            set_(self, "index_dir", os.path.abspath(path))
        if self.retry is None:
            set_(self, "retry", RetryPolicy())
        elif not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry must be a torchseq.RetryPolicy, got {type(self.retry).__name__}")

    @classmethod
    def create(cls, **options: Any) -> ReaderOptions:
        """Build from keywords; an unknown keyword is a :class:`~torchseq.ConfigError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown reader option(s) {unknown}; options are {sorted(known)}")
        return cls(**options)

    @property
    def opener(self) -> ShardOpener:
        """How shards are opened (fsspec options, retries, ``pipe:``)."""
        return ShardOpener(self.storage_options, self.retry, self.allow_pipe)

"""Exceptions and the bad-input policy.

Every exception takes exactly one string: DataLoader re-creates a worker's
exception in the main process as ``type(exc)(message)``, so anything that is
not in the message is lost on the way. Messages name the place first
(``path:line: ...`` or ``shard.tar::member: ...``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Literal

OnError = Literal["raise", "skip", "warn"]
ON_ERROR_CHOICES = ("raise", "skip", "warn")


class TorchseqError(Exception):
    """Base class of every error torchseq raises on purpose."""


class DataError(TorchseqError, ValueError):
    """A record, line, member or shard is malformed."""


class UnsafeContentError(DataError):
    """A shard holds content torchseq refuses to decode (pickles)."""


class ShardNotFoundError(TorchseqError, FileNotFoundError):
    """A shard named by the spec does not exist."""


class ConfigError(TorchseqError, ValueError):
    """The pipeline was configured with invalid arguments."""


class StateError(TorchseqError, ValueError):
    """A checkpoint does not fit the pipeline it is loaded into."""


class DataWarning(UserWarning):
    """Emitted for each skipped input under ``on_error="warn"``."""


def check_on_error(on_error: str) -> OnError:
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


class ErrorPolicy:
    """Applies ``on_error`` to one reader run and counts what it skipped.

    ``handle`` re-raises under ``"raise"``; otherwise it records the error
    (by reason) and returns, so the caller skips the bad input and goes on.
    """

    __slots__ = ("mode", "counts", "errors", "max_kept")

    def __init__(self, mode: OnError, max_kept: int = 1000) -> None:
        self.mode = mode
        self.counts: Counter[str] = Counter()
        self.errors: list[tuple[str, str]] = []
        self.max_kept = max_kept

    def handle(self, error: TorchseqError, reason: str) -> None:
        if self.mode == "raise":
            raise error
        self.counts[reason] += 1
        if len(self.errors) < self.max_kept:
            self.errors.append((str(error), reason))
        if self.mode == "warn":
            warnings.warn(f"skipped: {error}", DataWarning, stacklevel=3)

    @property
    def num_skipped(self) -> int:
        return sum(self.counts.values())

"""Exceptions, warnings and the bad-input policy: every one torchseq raises or emits lives here.

Every exception takes exactly one string: DataLoader re-creates a worker's
exception in the main process as ``type(exc)(message)``, so anything that is
not in the message is lost on the way. Messages name the place first
(``path:line: ...`` or ``shard.tar::member: ...``), then say what was wrong,
then what to do about it.

Each data exception carries a short ``reason`` ("invalid json", "corrupt
shard", ...) under which :class:`ErrorPolicy` counts it when it is skipped.
The reason is a class attribute, optionally refined per instance; it is for
counting inside the process that skipped the input and is not part of the
message contract.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Literal, NamedTuple, TypeVar

OnError = Literal["raise", "skip", "warn"]
ON_ERROR_CHOICES = ("raise", "skip", "warn")

#: What to do about each kind of bad input; appended to record-level messages.
HINTS: dict[str, str] = {
    "invalid json": "fix or remove the line",
    "invalid utf-8": "re-encode the file as UTF-8",
    "wrong type": "texts must be JSON strings",
    "missing field": "give every record an anchor and a positive text, or map your keys with fields=",
    "empty text": "drop records with empty texts before writing the shard",
    "unknown format": "write one of the formats in torchseq.records, or map keys with fields=",
    "record too large": "raise max_record_bytes= if such records are legitimate",
    "invalid npy": "re-write the member with numpy.save (integer token ids, no pickles)",
    "unsafe content": "re-write the shard without pickles (use .json or .npy members)",
}

SKIP_HINT = "pass on_error='skip' to skip and count such input"


class TorchseqError(Exception):
    """Base class of every error torchseq raises on purpose.

    ``place`` is the place its message starts with, when the raiser knew one
    (set by :func:`located` and :func:`data_error`; like ``reason`` it is for
    the process that raised it: the message alone crosses process boundaries).
    """

    reason = "error"
    place: str | None = None


class DataError(TorchseqError, ValueError):
    """A record, line, member or shard is malformed."""

    reason = "bad input"


class UnsafeContentError(DataError):
    """A shard holds content torchseq refuses to decode (pickles)."""

    reason = "unsafe content"


class CorruptShardError(DataError):
    """A shard's byte stream is truncated or corrupt (gzip, zstd, tar); the rest of it is lost."""

    reason = "corrupt shard"


class UnknownFormatError(DataError):
    """A shard is not in a format the reader understands (e.g. a tar given to ``read_jsonl``)."""

    reason = "unknown shard format"


class TooManyErrorsError(DataError):
    """More input was bad than ``max_errors`` / ``max_error_rate`` tolerate; the run stops."""

    reason = "too many errors"


class ShardReadError(TorchseqError, OSError):
    """The operating system failed to read a local shard (``EIO`` from a disk, ``ESTALE`` from an NFS mount...).

    The storage failed, not necessarily the shard's content: reading it again may succeed.
    """

    reason = "read error"


class ShardNotFoundError(TorchseqError, FileNotFoundError):
    """A shard named by the spec does not exist."""

    reason = "missing shard"


class RemoteError(TorchseqError, OSError):
    """Reading a remote shard failed for good (retries exhausted, or a permanent fault)."""

    reason = "remote error"


class RemoteAccessError(RemoteError, PermissionError):
    """The store refused access to a remote shard (HTTP 401/403, S3 AccessDenied)."""

    reason = "access denied"


class ConfigError(TorchseqError, ValueError):
    """The pipeline was configured with invalid arguments."""


class StateError(TorchseqError, ValueError):
    """A checkpoint does not fit the pipeline it is loaded into."""


class DataWarning(UserWarning):
    """Emitted for each skipped input under ``on_error="warn"``."""


class BalanceWarning(UserWarning):
    """A worker produced a different number of batches than planned; the step guard evened it out."""


class IndexWarning(UserWarning):
    """The record-count index was wrong or not trusted: a shard held another number of records, or an entry was bad."""


class RecordLevelSplitWarning(UserWarning):
    """Fewer shards than global workers: work is split per record."""


class RepeatedEpochWarning(UserWarning):
    """A shuffled pipeline was iterated again at the same epoch: its order repeats (``set_epoch`` forgotten)."""


class StatsWarning(UserWarning):
    """Statistics could not be recorded for a worker (more than the stats table has rows)."""


E = TypeVar("E", bound=TorchseqError)


def located(cls: type[E], place: str, what: str) -> E:
    """``cls(f"{place}: {what}")`` that remembers its place."""
    error = cls(f"{place}: {what}")
    error.place = place
    return error


def data_error(place: str, what: str, reason: str, cls: type[DataError] = DataError) -> DataError:
    """A data error whose message is ``place: what; hint; how to skip``."""
    hint = HINTS.get(reason)
    error = located(cls, place, f"{what}; {hint}; or {SKIP_HINT}" if hint else f"{what}; {SKIP_HINT}")
    error.reason = reason
    return error


def check_on_error(on_error: str) -> OnError:
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


def check_tolerance(max_errors: int | None, max_error_rate: float | None) -> None:
    """Validate the ``max_errors`` / ``max_error_rate`` reader arguments."""
    if max_errors is not None and (type(max_errors) is not int or max_errors < 0):
        raise ConfigError(f"max_errors must be an int >= 0 or None, got {max_errors!r}")
    if max_error_rate is not None and not 0.0 <= max_error_rate < 1.0:
        raise ConfigError(f"max_error_rate must be in [0, 1) or None, got {max_error_rate!r}")


class SkippedInput(NamedTuple):
    """One skipped input: where it was, why (the counting reason) and the full message."""

    place: str
    reason: str
    message: str


#: ``max_error_rate`` is judged only once this many inputs were seen (during the
#: run and at its end): one bad line among the first three, or a DataLoader
#: worker that reads a small file with a few bad lines, must not stop a healthy
#: corpus. Below it, ``max_errors`` alone bounds what is skipped.
RATE_MIN_INPUTS = 1000

#: The reader defaults (``read_jsonl(..., max_errors=, max_error_rate=)``): a run that is
#: mostly garbage stops; ``None`` turns a limit off.
DEFAULT_MAX_ERRORS = 1000
DEFAULT_MAX_ERROR_RATE = 0.01


class ErrorPolicy:
    """Applies ``on_error`` to one reader run, counts what it skipped, enforces the tolerance.

    ``handle`` re-raises under ``"raise"``; otherwise it records the error
    (count by reason, and the first ``max_kept`` as :class:`SkippedInput`) and
    returns, so the caller skips the bad input and goes on.

    Tolerance (per reading process, i.e. per DataLoader worker and rank):
    ``max_errors`` stops the run when more than that many inputs were
    skipped; ``max_error_rate`` stops it when the skipped fraction of inputs
    exceeds it -- judged once :data:`RATE_MIN_INPUTS` inputs were seen, at
    each skip and at the end of the run. Both raise
    :class:`TooManyErrorsError`, whatever ``on_error`` says. ``None`` turns a
    limit off; the readers default to :data:`DEFAULT_MAX_ERRORS` and
    :data:`DEFAULT_MAX_ERROR_RATE`.
    """

    __slots__ = ("mode", "counts", "errors", "max_kept", "max_errors", "max_error_rate")

    def __init__(
        self,
        mode: OnError,
        max_errors: int | None = DEFAULT_MAX_ERRORS,
        max_error_rate: float | None = DEFAULT_MAX_ERROR_RATE,
        max_kept: int = 1000,
    ) -> None:
        self.mode = mode
        self.counts: Counter[str] = Counter()
        self.errors: list[SkippedInput] = []
        self.max_kept = max_kept
        self.max_errors = max_errors
        self.max_error_rate = max_error_rate

    def handle(self, error: TorchseqError, place: str, inputs: int = 0) -> None:
        """Raise ``error`` or count it; ``inputs`` is how many inputs this run has seen so far."""
        if self.mode == "raise":
            raise error
        reason = error.reason
        self.counts[reason] += 1
        if len(self.errors) < self.max_kept:
            self.errors.append(SkippedInput(place, reason, str(error)))
        if self.mode == "warn":
            warnings.warn(f"skipped: {error}", DataWarning, stacklevel=3)
        skipped = self.num_skipped
        if self.max_errors is not None and skipped > self.max_errors:
            raise self._too_many(place, inputs, f"more than max_errors={self.max_errors}")
        if inputs >= RATE_MIN_INPUTS:
            self._check_rate(place, inputs)

    def finish(self, place: str, inputs: int) -> None:
        """End of the run: apply ``max_error_rate`` (skips seen early may outweigh the inputs after them)."""
        if inputs >= RATE_MIN_INPUTS:
            self._check_rate(place, inputs)

    def _check_rate(self, place: str, inputs: int) -> None:
        rate = self.max_error_rate
        if rate is not None and self.num_skipped > rate * max(inputs, self.num_skipped):
            share = self.num_skipped / max(inputs, self.num_skipped)
            raise self._too_many(place, inputs, f"{share:.1%} of inputs, over max_error_rate={rate}")

    def _too_many(self, place: str, inputs: int, limit: str) -> TooManyErrorsError:
        common = ", ".join(f"{reason} ({n})" for reason, n in self.counts.most_common(4))
        return TooManyErrorsError(
            f"{place}: too much bad input: {self.num_skipped} skipped of {inputs} read in this "
            f"worker ({limit}); most common: {common}. The data looks broken: check it with "
            "`torchseq inspect`, fix it, or raise max_errors / max_error_rate (None: no limit)"
        )

    @property
    def num_skipped(self) -> int:
        return sum(self.counts.values())

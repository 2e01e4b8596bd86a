"""Remote shards through fsspec: ranged reads that survive transient faults.

A remote shard is read as a sequence of byte-range requests
(``fs.cat_file(path, start, end)``) of ``RetryPolicy.request_bytes`` each.
The reader only advances its offset by bytes it actually received, so when a
request fails transiently (connection dropped mid-body, HTTP 5xx/429,
timeouts, S3 SlowDown) the same range is asked for again after a backoff: the
stream above it -- decompression, line splitting, tar parsing, the record
cursor -- never sees the fault. Nothing is lost and nothing is read twice.
Every request waits at most ``RetryPolicy.read_timeout`` for the store while
receiving nothing; a stall is a transient fault like the others.

Every read is pinned to the version of the object its first request saw
(:mod:`torchseq.sources.store`): an object replaced during the read is a
:class:`~torchseq.errors.RemoteError` naming it, never a stream stitched from
two versions.

Permanent faults are not retried: a missing object raises
:class:`~torchseq.errors.ShardNotFoundError`, a refused one
:class:`~torchseq.errors.RemoteAccessError`, and running out of attempts
:class:`~torchseq.errors.RemoteError` naming the byte offset.

Servers that ignore ``Range`` (answer 200 with the whole object) still work:
the first answer is kept and served from memory.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchseq.errors import (
    ConfigError,
    RemoteAccessError,
    RemoteError,
    ShardNotFoundError,
    TorchseqError,
)
from torchseq.sources.store import cause_chain, remote_object

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MISSING_STATUS = frozenset({404, 410})
DENIED_STATUS = frozenset({401, 403})
TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
     "ServiceUnavailable", "RequestTimeTooSkewed"}
)
DENIED_S3_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "AllAccessDisabled", "AccountProblem", "InvalidToken"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads retry transient faults.

    Delays grow as ``initial_delay * multiplier ** k`` up to ``max_delay``,
    each scaled by a random factor in ``[1 - jitter, 1]`` (so that workers
    hit by the same outage do not retry in lockstep). ``attempts`` bounds the
    tries of one request; a request that succeeds resets the count, so a long
    shard may survive many separate faults but never waits forever on one.

    Attributes:
        attempts: tries per request (>= 1), the first one included.
        initial_delay: seconds before the first retry.
        max_delay: upper bound of one delay, in seconds.
        multiplier: growth factor of the delay.
        jitter: fraction of each delay that is randomised (0 to 1).
        request_bytes: bytes asked for per range request; a fault costs at
            most this much re-download.
        read_timeout: seconds one request may wait while receiving nothing (to
            connect, for the answer to start, between two pieces of the body)
            before it counts as a transient fault and is retried; ``None``
            leaves only the client's own timeouts. Applies to ``http(s)://``
            and ``s3://``; a request that stalls for good costs at most
            ``attempts * read_timeout`` plus the delays.
        sleep: the function that waits (injectable for tests and async hosts).
    """

    attempts: int = 6
    initial_delay: float = 0.5
    max_delay: float = 20.0
    multiplier: float = 2.0
    jitter: float = 0.25
    request_bytes: int = 8 << 20
    read_timeout: float | None = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry: attempts must be >= 1, got {self.attempts}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ConfigError("retry: delays must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"retry: jitter must be in [0, 1], got {self.jitter}")
        if self.request_bytes < 1:
            raise ConfigError(f"retry: request_bytes must be >= 1, got {self.request_bytes}")
        if self.read_timeout is not None and not self.read_timeout > 0:
            raise ConfigError(f"retry: read_timeout must be > 0 seconds or None, got {self.read_timeout}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))
        return base * (1.0 - self.jitter * random.random())


# ----------------------------------------------------------------- classification
def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)  # botocore.exceptions.ClientError
    if isinstance(response, Mapping):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    module = type(exc).__module__
    if module.startswith("aiohttp"):
        import aiohttp

        return isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                                aiohttp.ServerTimeoutError))
    if module.startswith(("botocore", "aiobotocore", "urllib3", "http.client")):
        # HTTPClientError covers dropped connections, read timeouts and
        # incomplete bodies; ClientError (HTTP answers) is judged by status.
        try:
            from botocore.exceptions import HTTPClientError
        except ImportError:  # pragma: no cover - depends on the environment
            return False
        return isinstance(exc, HTTPClientError)
    return type(exc).__name__ in {"IncompleteRead", "IncompleteReadError", "FSTimeoutError",
                                  "ResponseStreamingError"}


def classify(exc: BaseException) -> str:
    """``"transient"``, ``"missing"``, ``"denied"`` or ``"permanent"`` for a failed request.

    The whole cause chain is read: fsspec reports a HEAD that got a 503 as a
    ``FileNotFoundError`` caused by the 503, which is transient, not missing.
    """
    chain = list(cause_chain(exc))
    for link in chain:
        status, code = _status_of(link), _s3_code(link)
        if status in TRANSIENT_STATUS or code in TRANSIENT_S3_CODES:
            return "transient"
        if status in DENIED_STATUS or code in DENIED_S3_CODES:
            return "denied"
        if status in MISSING_STATUS or code in {"NoSuchKey", "NoSuchBucket", "404"}:
            return "missing"
        if _is_network_error(link):
            return "transient"
    if any(isinstance(link, PermissionError) for link in chain):
        return "denied"
    if any(isinstance(link, FileNotFoundError) for link in chain):
        return "missing"
    return "permanent"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text and text[0] else type(exc).__name__


def with_retry(url: str, what: str, retry: RetryPolicy, call: Callable[[], Any]) -> Any:
    """Run one request, retrying transient faults; permanent ones become torchseq errors."""
    failures = 0
    while True:
        try:
            return call()
        except TorchseqError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind == "missing":
                raise ShardNotFoundError(
                    f"{url}: shard not found ({_describe(exc)}); check the URL and the spec"
                ) from exc
            if kind == "denied":
                raise RemoteAccessError(
                    f"{url}: access denied ({_describe(exc)}); check the credentials passed "
                    "in storage_options= (or the environment) and the object's permissions"
                ) from exc
            if kind == "permanent":
                raise RemoteError(f"{url}: {what} failed ({_describe(exc)})") from exc
            failures += 1
            if failures >= retry.attempts:
                raise RemoteError(
                    f"{url}: {what} failed {failures} times, last with {_describe(exc)}; the "
                    "store or network keeps failing: retry later, or allow more with "
                    "retry=RetryPolicy(attempts=...)"
                ) from exc
            retry.sleep(retry.delay(failures))


# ----------------------------------------------------------------- filesystems
def import_fsspec() -> Any:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("reading URLs needs fsspec: pip install 'torchseq[remote]'") from exc
    return fsspec


def filesystem_for(url: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec filesystem for ``url``'s protocol, built with ``storage_options``."""
    fsspec = import_fsspec()
    protocol = url.split("://", 1)[0]
    try:
        return fsspec.filesystem(protocol, **dict(storage_options or {}))
    except ImportError as exc:
        raise ConfigError(
            f"{url}: reading {protocol}:// URLs needs an fsspec backend that is not installed "
            f"({exc}); e.g. pip install s3fs (s3://), gcsfs (gs://), aiohttp (https://)"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{url}: unknown or unsupported protocol {protocol!r} ({exc})") from exc


class RemoteReader(io.RawIOBase):
    """A read-only, forward stream over one remote object, made of retried range requests.

    Every range is read from the version the HEAD saw (``version``); a change
    raises :class:`~torchseq.errors.RemoteError`.
    """

    def __init__(self, url: str, fs: Any, retry: RetryPolicy) -> None:
        super().__init__()
        self.url = url
        self._object = remote_object(url, fs, retry.read_timeout)
        self._retry = retry
        self.version = with_retry(url, "HEAD (size lookup)", retry, self._object.head)
        self.size: int | None = self.version.size
        self.offset = 0  # bytes handed to the caller so far
        self._buffer = b""
        self._buffer_at = 0  # offset of self._buffer[0]
        self._whole = False  # the server ignored Range: the buffer is the whole object
        self.requests = 0

    def readable(self) -> bool:
        return True

    def _fetch(self) -> None:
        start = self.offset
        end = start + self._retry.request_bytes
        if self.size is not None:
            end = min(end, self.size)

        def request() -> bytes:
            self.requests += 1
            try:
                data = self._object.get(start, end, self.version)
            except Exception as exc:
                if self.size is None and any(_status_of(e) == 416 for e in cause_chain(exc)):
                    return b""  # size unknown: a range past the end means the end
                raise
            if self.size is not None and len(data) < end - start:
                # A body shorter than asked for, without an error: the
                # connection was cut in a way the client did not notice.
                raise ConnectionError(f"short read: {len(data)} of {end - start} bytes at {start}")
            return data

        data = with_retry(self.url, f"reading bytes {start}-{end - 1}", self._retry, request)
        if len(data) > end - start:
            if start == 0 and (self.size is None or len(data) == self.size):
                self._whole = True  # the server ignored Range and sent everything
                self._buffer, self._buffer_at = data, 0
                return
            raise RemoteError(
                f"{self.url}: asked for {end - start} bytes at {start}, got {len(data)}; the "
                "server mishandles Range requests"
            )
        self._buffer, self._buffer_at = data, start

    def readinto(self, target: Any) -> int:
        view = memoryview(target).cast("B")
        if self.size is not None and self.offset >= self.size:
            return 0
        position = self.offset - self._buffer_at
        if position >= len(self._buffer):
            if self._whole:
                return 0
            self._fetch()
            position = self.offset - self._buffer_at
            if position >= len(self._buffer):
                return 0  # size unknown and the server sent nothing more: end of object
        n = min(len(view), len(self._buffer) - position)
        view[:n] = self._buffer[position : position + n]
        self.offset += n
        if position + n == len(self._buffer) and not self._whole:
            self._buffer = b""
            self._buffer_at = self.offset
        return n


def open_remote(url: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy) -> RemoteReader:
    return RemoteReader(url, filesystem_for(url, storage_options), retry)


def glob_remote(pattern: str, storage_options: Mapping[str, Any] | None, retry: RetryPolicy) -> list[str]:
    fs = filesystem_for(pattern, storage_options)
    protocol = pattern.split("://", 1)[0]
    found = with_retry(pattern, "listing", retry, lambda: fs.glob(pattern))
    return sorted(p if "://" in p else f"{protocol}://{p}" for p in found)

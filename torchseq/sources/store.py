"""One remote object, pinned to the version it had when its read began.

:class:`~torchseq.sources.remote.RemoteReader` reads an object as many range
requests. If the object is replaced between two of them, the bytes before
and after the change belong to different files, and decompression, line
splitting and tar parsing would stitch them into one stream of records.
Each read is therefore pinned to the :class:`Version` the first request
(the HEAD) saw:

* HTTP: every range request carries ``If-Match: <ETag>`` (strong ETags), so
  a store that honours it answers 412 once the object changed;
* S3: every ``GetObject`` carries ``IfMatch=<ETag>``, and with
  ``storage_options={"version_aware": True}`` also the ``VersionId``, so
  reads of a versioned bucket keep the version they began with;
* both: the validators of every answer (ETag, Last-Modified, total size,
  VersionId, as far as the store sends them) are compared with the pin, so
  a store or proxy that ignores ``If-Match`` is caught too.

A change is a :class:`~torchseq.errors.RemoteError` naming the object
(counted as ``shard changed`` when skipped): the bytes handed on so far came
from one version, nothing after the change is delivered.

HTTP and S3 requests also get the read timeout
(:attr:`~torchseq.sources.remote.RetryPolicy.read_timeout`): the longest one
request waits for the store while receiving nothing (to connect, for the
answer to start, and between two pieces of its body). Other fsspec
protocols (``gs://``, ...) are read with ``fs.cat_file`` and their client's
own timeouts, and are not pinned: of a change, only an object that became
shorter than the HEAD said shows, as short reads that end in a
:class:`~torchseq.errors.RemoteError` once the attempts are used up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torchseq.errors import RemoteError, located

T = TypeVar("T")

#: Bytes asked of an S3 body per read (each read is bounded by the read timeout).
BODY_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class Version:
    """What identifies one version of an object, as far as the store says (``None``: not said)."""

    size: int | None = None
    etag: str | None = None
    modified: str | None = None
    version_id: str | None = None

    def difference(self, answer: Version) -> str | None:
        """How ``answer`` (the validators of a response) shows another version than this, if it does."""
        pairs = (
            ("ETag", _opaque(self.etag), _opaque(answer.etag)),
            ("VersionId", self.version_id, answer.version_id),
            ("Last-Modified", self.modified, answer.modified),
            ("size", self.size, answer.size),
        )
        for name, pinned, now in pairs:
            if pinned is not None and now is not None and pinned != now:
                return f"{name} was {pinned} when the read began, now {now}"
        return None


def _opaque(etag: str | None) -> str | None:
    """An ETag without its weak marker: a weak and a strong tag of one version compare equal here."""
    return etag.removeprefix("W/") if etag else None


def changed(url: str, start: int, detail: str) -> RemoteError:
    """The error of an object that changed after ``start`` of its bytes were read."""
    error = located(
        RemoteError, url,
        f"the object changed during the read ({detail}, at byte {start}); the bytes before came "
        "from the old version and the rest of the shard is lost: write new shards under new "
        "names instead of overwriting them, or (S3) turn on bucket versioning and pass "
        "storage_options={'version_aware': True} so a read keeps the version it began with",
    )
    error.reason = "shard changed"
    return error


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (or contexts), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _precondition_failed(exc: BaseException) -> bool:
    """Whether the store answered 412: the object no longer matches ``If-Match``."""
    for link in cause_chain(exc):
        response = getattr(link, "response", None)  # botocore.exceptions.ClientError
        if isinstance(response, Mapping):
            if response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return True
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                return True
        if getattr(link, "status", None) == 412:  # aiohttp.ClientResponseError
            return True
    return False


def _range_total(content_range: str | None) -> int | None:
    """The complete length in ``Content-Range: bytes 0-99/1234`` (``None`` if absent or ``*``)."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


class RemoteObject:
    """Any fsspec object: ``fs.info`` and ``fs.cat_file`` with the client's timeouts, not pinned."""

    def __init__(self, url: str, fs: Any, read_timeout: float | None) -> None:
        self.url = url
        self.fs = fs
        self.read_timeout = read_timeout

    def head(self) -> Version:
        """The object's current version (one request)."""
        return Version(size=self.fs.info(self.url).get("size"))

    def get(self, start: int, end: int, pinned: Version) -> bytes:
        """Bytes ``start .. end-1`` of the version ``pinned`` (here: of the object as it is now).

        Raises:
            RemoteError: the object is no longer that version (HTTP and S3).
        """
        data: bytes = self.fs.cat_file(self.url, start=start, end=end)
        return data

    def _run(self, coroutine: Any, *args: Any) -> Any:
        from fsspec.asyn import FSTimeoutError, sync

        try:
            return sync(self.fs.loop, coroutine, *args)
        except FSTimeoutError as exc:  # sync() hides a coroutine's TimeoutError, and its message
            cause = exc.__cause__
            raise TimeoutError(str(cause) if cause is not None else "timed out") from cause


class HttpObject(RemoteObject):
    """An object behind fsspec's ``HTTPFileSystem``: ranged GETs with ``If-Match`` and the read timeout."""

    def _request_options(self) -> dict[str, Any]:
        options = dict(self.fs.kwargs)
        if self.read_timeout is not None:
            import aiohttp

            t = self.read_timeout
            options["timeout"] = aiohttp.ClientTimeout(sock_connect=t, sock_read=t)
        return options

    def head(self) -> Version:
        info = self._run(self._head)
        return Version(size=info.get("size"), etag=info.get("ETag"), modified=info.get("Last-Modified"))

    async def _head(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.fs._info(self.url, **self._request_options())
        return info

    def get(self, start: int, end: int, pinned: Version) -> bytes:
        data: bytes = self._run(self._get, start, end, pinned)
        return data

    async def _get(self, start: int, end: int, pinned: Version) -> bytes:
        fs = self.fs
        options = self._request_options()
        headers = dict(options.pop("headers", None) or {})
        # Byte ranges of the stored bytes, never of a compressed representation.
        headers.update({"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})
        if pinned.etag and not pinned.etag.startswith("W/"):
            headers["If-Match"] = pinned.etag  # If-Match compares strong tags only
        session = await fs.set_session()
        try:
            async with session.get(fs.encode_url(self.url), headers=headers, **options) as response:
                if response.status == 412:
                    raise changed(self.url, start, f"the store refused If-Match: {pinned.etag}")
                if response.status == 404:
                    raise FileNotFoundError(self.url)
                response.raise_for_status()
                size = _range_total(response.headers.get("Content-Range"))
                if size is None and response.status == 200:
                    size = response.content_length
                answer = Version(size=size, etag=response.headers.get("ETag"),
                                 modified=response.headers.get("Last-Modified"))
                difference = pinned.difference(answer)
                if difference is not None:
                    raise changed(self.url, start, difference)
                data: bytes = await response.read()
                return data
        except (TimeoutError, asyncio.TimeoutError) as exc:  # aiohttp's ServerTimeoutError, ...
            raise TimeoutError(
                f"no data for {self.read_timeout} s reading bytes {start}-{end - 1} "
                "(RetryPolicy.read_timeout)"
            ) from exc


class S3Object(RemoteObject):
    """An object behind s3fs: ``GetObject`` with ``IfMatch`` (and ``VersionId`` when version-aware).

    The body is read here, piece by piece, each piece within the read timeout
    (botocore's own ``read_timeout`` is a minute by default).
    """

    async def _within(self, awaitable: Awaitable[T], what: str) -> T:
        """``awaitable``, failed with a TimeoutError when the store stays silent past the read timeout."""
        if self.read_timeout is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, self.read_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise TimeoutError(
                f"no answer for {self.read_timeout} s {what} (RetryPolicy.read_timeout)"
            ) from None

    def head(self) -> Version:
        info = self._run(self._head)
        modified = info.get("LastModified")
        return Version(size=info.get("size"), etag=info.get("ETag") or None,
                       modified=str(modified) if modified else None, version_id=info.get("VersionId"))

    async def _head(self) -> dict[str, Any]:
        await self.fs.set_session()  # the client is built here, not waited for from the store
        # refresh: a listing cached by an earlier glob may describe an older version.
        info: dict[str, Any] = await self._within(self.fs._info(self.url, refresh=True), "to HEAD")
        return info

    def get(self, start: int, end: int, pinned: Version) -> bytes:
        data: bytes = self._run(self._get, start, end, pinned)
        return data

    async def _get(self, start: int, end: int, pinned: Version) -> bytes:
        fs = self.fs
        bucket, key, path_version = fs.split_path(self.url)
        request: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if pinned.etag:
            request["IfMatch"] = pinned.etag
        # Only a version-aware filesystem names versions: reading one by id
        # needs the s3:GetObjectVersion permission, which GetObject does not.
        version = path_version or (pinned.version_id if fs.version_aware else None)
        if version and version != "null":
            request["VersionId"] = version
        what = f"reading bytes {start}-{end - 1}"
        await fs.set_session()
        try:
            response = await self._within(fs._call_s3("get_object", **request), what)
        except Exception as exc:
            if _precondition_failed(exc):
                raise changed(self.url, start, f"the store refused IfMatch: {pinned.etag}") from None
            raise
        body = response["Body"]
        try:
            modified = response.get("LastModified")
            answer = Version(size=_range_total(response.get("ContentRange")), etag=response.get("ETag"),
                             modified=str(modified) if modified else None, version_id=response.get("VersionId"))
            difference = pinned.difference(answer)
            if difference is not None:
                raise changed(self.url, start, difference)
            chunks = []
            while chunk := await self._within(body.read(BODY_CHUNK_BYTES), what):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            body.close()


def remote_object(url: str, fs: Any, read_timeout: float | None) -> RemoteObject:
    """The object at ``url`` on ``fs``, read as its protocol allows (HTTP, S3, else plain fsspec)."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "s3" in protocols and hasattr(fs, "_call_s3"):
        return S3Object(url, fs, read_timeout)
    if "http" in protocols and hasattr(fs, "set_session"):
        return HttpObject(url, fs, read_timeout)
    return RemoteObject(url, fs, read_timeout)

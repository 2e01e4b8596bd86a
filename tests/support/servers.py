"""Real servers on 127.0.0.1 for the remote tests, with injected faults.

* :func:`serve_files`: an HTTP file server with ``Range`` support (werkzeug).
* :func:`serve_s3`: moto's S3 in server mode (the same WSGI app as
  ``moto.server.ThreadedMotoServer``), reached by s3fs through ``endpoint_url``.

Both sit behind :class:`FaultInjector`, a WSGI middleware that asks a
:class:`Faults` rule what to do with each request -- answer normally, answer
with an error status, send part of the body and drop the connection, stall
(mid-body or before answering), or replace the object with its next version
before answering -- and logs every request with the action taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    start: int | None  # first byte of the Range header, if any
    number: int  # how many (method, path) requests came before, plus one
    action: str


Rule = Callable[[str, str, "int | None", int], str]


class Faults:
    """Decides per request what the server does. Actions (``rule``'s answer):

    * ``"ok"``: answer normally;
    * ``"status:503"`` (any code): answer with that error status;
    * ``"drop"``: send half of the body (its full length announced), then cut the connection;
    * ``"stall:SECONDS"``: send half of the body, go silent for that long, then cut the connection;
    * ``"wait:SECONDS"``: go silent before answering, then cut the connection;
    * ``"replace"``: call ``replace(path)`` (the object becomes its next version), then answer normally.
    """

    def __init__(self, rule: Rule | None = None, replace: Callable[[str], None] | None = None) -> None:
        self.rule: Rule = rule or (lambda method, path, start, number: "ok")
        self.replace = replace
        self.log: list[Seen] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def decide(self, method: str, path: str, start: int | None) -> str:
        with self._lock:
            self._counts[method, path] += 1
            number = self._counts[method, path]
            action = self.rule(method, path, start, number)
            self.log.append(Seen(method, path, start, number, action))
            return action

    def seen(self, action: str | None = None, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.log if (action is None or s.action == action)
                    and (method is None or s.method == method)]


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    first = header[len("bytes="):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


S3_ERRORS = {
    403: ("AccessDenied", "Access Denied"),
    503: ("ServiceUnavailable", "Service is unable to handle request."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


class FaultInjector:
    """WSGI middleware: applies :class:`Faults` to requests whose path starts with ``prefix``.

    With ``if_match=False`` the server ignores ``If-Match`` (the header is
    removed before the app sees it), as some stores and proxies do. Stalls
    end early when ``stopping`` is set (the server shuts down).
    """

    def __init__(self, app: Any, faults: Faults, prefix: str = "/", s3: bool = False,
                 if_match: bool = True) -> None:
        self.app = app
        self.faults = faults
        self.prefix = prefix
        self.s3 = s3
        self.if_match = if_match
        self.stopping = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        if not path.startswith(self.prefix) or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        if not self.if_match:
            environ.pop("HTTP_IF_MATCH", None)
        action = self.faults.decide(method, path, _range_start(environ.get("HTTP_RANGE")))
        if action == "replace":
            if self.faults.replace is None:
                raise LookupError(f"{path}: a rule answered 'replace' but Faults has no replace=")
            self.faults.replace(path)
            action = "ok"
        if action.startswith("wait:"):
            self.stopping.wait(float(action.split(":", 1)[1]))
            _cut(environ["werkzeug.socket"])
            raise ConnectionResetError("fault injected: no answer")
        if action.startswith("status:"):
            code = int(action.split(":", 1)[1])
            if self.s3:
                error, message = S3_ERRORS.get(code, ("ServiceUnavailable", "Unavailable"))
                body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{error}</Code>'
                        f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()
                response = Response(b"" if method == "HEAD" else body, status=code,
                                    content_type="application/xml")
            else:
                response = Response(b"injected fault\n", status=code, content_type="text/plain")
            return response(environ, start_response)  # type: ignore[no-any-return]
        if (action == "drop" or action.startswith("stall:")) and method == "GET":
            captured: dict[str, Any] = {}

            def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                captured["status"], captured["headers"] = status, headers
                return lambda data: None

            body = b"".join(self.app(environ, capture))
            start_response(captured["status"], captured["headers"])
            stall = float(action.split(":", 1)[1]) if action.startswith("stall:") else 0.0
            return self._half_then_drop(body, environ["werkzeug.socket"], stall)
        return self.app(environ, start_response)  # type: ignore[no-any-return]

    def _half_then_drop(self, body: bytes, sock: socket.socket, stall: float) -> Iterator[bytes]:
        """Send half of ``body`` (its full Content-Length announced), stay silent ``stall`` s, cut the connection."""
        yield body[: len(body) // 2]
        if stall:
            self.stopping.wait(stall)
        _cut(sock)
        raise ConnectionResetError("fault injected: connection dropped mid-body")


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the client may have gone already (it timed out)
        sock.shutdown(socket.SHUT_RDWR)


def etag_of(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class FileApp:
    """Serves ``files`` (path -> bytes) with HEAD, GET and byte ranges (unless ``ranges=False``).

    Each answer carries a strong ETag of the object (unless ``etags=False``),
    and a GET whose ``If-Match`` does not name it gets 412 Precondition Failed.
    """

    def __init__(self, files: dict[str, bytes], ranges: bool = True, etags: bool = True) -> None:
        self.files = files
        self.ranges = ranges
        self.etags = etags

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        data = self.files.get(request.path)
        if data is None:
            return Response(b"not found\n", status=404)(environ, start_response)  # type: ignore[no-any-return]
        response = Response(data, content_type="application/octet-stream")
        if self.etags:
            etag = etag_of(data)
            if request.if_match and not request.if_match.contains(etag):
                failed = Response(b"precondition failed\n", status=412)
                return failed(environ, start_response)  # type: ignore[no-any-return]
            response.set_etag(etag)
        if self.ranges:
            response.make_conditional(request, accept_ranges=True, complete_length=len(data))
        return response(environ, start_response)  # type: ignore[no-any-return]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # the Faults log records every request


@contextmanager
def _serving(app: FaultInjector) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        app.stopping.set()
        server.shutdown()
        thread.join()
        server.server_close()


@contextmanager
def serve_files(files: dict[str, bytes], faults: Faults, ranges: bool = True, etags: bool = True,
                if_match: bool = True) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``files`` (changes to the dict are served); yields its base URL."""
    with _serving(FaultInjector(FileApp(files, ranges, etags), faults, if_match=if_match)) as url:
        yield url


@contextmanager
def serve_s3(faults: Faults, prefix: str = "/", if_match: bool = True) -> Iterator[str]:
    """moto's S3 in server mode on 127.0.0.1; yields the endpoint URL."""
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    with _serving(FaultInjector(app, faults, prefix=prefix, s3=True, if_match=if_match)) as url:
        yield url


@contextmanager
def s3_bucket(bucket: str, faults: Faults, *, versioned: bool = False, if_match: bool = True,
              objects: dict[str, bytes]) -> Iterator[tuple[dict[str, Any], Any]]:
    """moto's S3 serving ``objects`` in ``bucket``; yields s3fs storage options and a boto3 client.

    botocore's own retries (up to seconds of backoff each) are turned off, so that 503s reach
    torchseq's retry quickly; torchseq reads the bodies itself.
    """
    import boto3

    with serve_s3(faults, prefix=f"/{bucket}/", if_match=if_match) as endpoint:
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "not-a-real-secret",
                   "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True,
                   "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="not-a-real-secret", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        if versioned:
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        for key, data in objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=data)
        yield options, client

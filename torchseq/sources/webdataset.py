"""WebDataset tar shards (``.tar``, ``.tar.gz``) as written by ``webdataset.TarWriter``.

Members are grouped into samples by key exactly as webdataset does
(``webdataset.tariterators.base_plus_ext``). The tar stream itself is read
with :mod:`tarfile` in streaming mode so that a corrupt member is reported as
``shard.tar::member`` and the samples before it are kept (webdataset's own
iterator rewrites the exception's arguments instead).

Members, per sample ``KEY``:

* ``KEY.json`` -- a record in any format of :mod:`torchseq.records`;
* ``KEY.<field>.txt`` -- a text field (``KEY.anchor.txt``, ``KEY.positive.txt``);
* ``KEY.<field>.json`` -- a JSON field (``KEY.negatives.json``);
* ``KEY.<field>.npy`` -- pre-tokenized ids for ``field`` (loaded with
  ``allow_pickle=False``);
* pickle members (``.pyd``, ``.pickle``, ``.pkl``) are refused, never decoded;
* anything else is passed through as bytes under its extension.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from webdataset.tariterators import base_plus_ext

from torchseq.errors import DataError, ErrorPolicy, ShardNotFoundError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardSource, decode_json
from torchseq.sources.fs import open_binary

PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl"})
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)

Sample = tuple[str, dict[str, bytes]]


def _member_error(message: str, reason: str, place: str) -> RecordFormatError:
    error = RecordFormatError(message, reason)
    error.place = place  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True)
class WebDatasetSource(ShardSource):
    """Samples of WebDataset tar shards.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` counts samples).
    """

    def place(self, path: str, index: int, item: Any) -> str:
        key, members = item
        if "json" in members:
            return f"{path}::{key}.json"
        return f"{path}::{key}"

    def items(self, path: str, skip: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
        try:
            raw = open_binary(path)
        except FileNotFoundError:
            policy.handle(ShardNotFoundError(f"{path}: shard not found"), "missing shard")
            return
        index = 0
        key: str | None = None
        members: dict[str, bytes] = {}
        member = "(header)"
        with raw:
            try:
                with tarfile.open(fileobj=raw, mode="r|*") as tar:
                    for info in tar:
                        member = info.name
                        if not info.isreg():
                            continue
                        base, ext = base_plus_ext(info.name)
                        if base is None or base.startswith("__") or ext is None:
                            continue
                        if base != key:
                            if key is not None:
                                index += 1
                                if index > skip:
                                    yield index, (key, members)
                            key, members = base, {}
                        if index + 1 > skip:
                            handle = tar.extractfile(info)
                            members[ext] = handle.read() if handle is not None else b""
                    if key is not None:
                        index += 1
                        if index > skip:
                            yield index, (key, members)
            except _STREAM_ERRORS as exc:
                policy.handle(
                    DataError(
                        f"{path}::{member}: corrupt or truncated tar ({exc}); "
                        f"the {index} sample(s) before it were read"
                    ),
                    "corrupt tar",
                )

    def decode(self, path: str, index: int, item: Any) -> Record:
        key, members = item
        obj: Any = {}
        extra: dict[str, Any] = {}
        tokens: dict[str, Any] = {}
        for ext, data in members.items():
            place = f"{path}::{key}.{ext}"
            head, _, last = ext.rpartition(".")
            if last in PICKLE_EXTENSIONS:
                raise _member_error(
                    "pickle member refused: torchseq never unpickles shard content",
                    "unsafe content",
                    place,
                )
            if ext == "json":
                try:
                    obj = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, place) from None
            elif last == "json":
                try:
                    extra[head] = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, place) from None
            elif last == "txt":
                try:
                    extra[head or "txt"] = data.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise _member_error(f"invalid UTF-8 at byte {bad.start}", "invalid utf-8", place) from None
            elif last == "npy":
                try:
                    tokens[head] = np.load(io.BytesIO(data), allow_pickle=False)
                except ValueError as exc:
                    raise _member_error(f"invalid .npy member ({exc})", "invalid npy", place) from None
            else:
                extra[ext] = data
        if isinstance(obj, dict):
            merged = {**obj, **extra}
            if tokens and "anchor" not in merged and self.fields is None:
                record: Record = dict(merged)
            else:
                record = normalize(merged, self.fields)
        else:
            record = normalize(obj, self.fields)
            record.update(extra)
        if tokens:
            record["tokens"] = tokens
        record.setdefault("__key__", key)
        return record

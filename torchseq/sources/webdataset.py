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
  ``allow_pickle=False``); ``KEY.negatives.<k>.npy`` -- ids of hard negative ``k``;
* pickle members (``.pyd``, ``.pickle``, ``.pkl``) are refused, never decoded;
* anything else is passed through as bytes under its extension.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from torchseq.errors import DataError, ErrorPolicy, ShardNotFoundError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardSource, decode_json
from torchseq.sources.fs import open_binary
from torchseq.sources.spec import is_url
from torchseq.sources.tarstream import UnsupportedTar, load_npy, plain_members

PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl"})
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)

Sample = tuple[str, dict[str, bytes]]


def _member_error(message: str, reason: str, place: str) -> RecordFormatError:
    error = RecordFormatError(message, reason)
    error.place = place  # type: ignore[attr-defined]
    return error


def _negative_number(name: str) -> int:
    suffix = name.partition(".")[2]
    return int(suffix) if suffix.isdigit() else -1


@dataclass(frozen=True)
class WebDatasetSource(ShardSource):
    """Samples of WebDataset tar shards.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` counts samples).
    """

    def _directory(self) -> str | None:
        spec = self.spec
        if isinstance(spec, (str, os.PathLike)):
            path = os.fspath(spec)
            if not is_url(path) and os.path.isdir(path.removeprefix("file://")):
                return path.removeprefix("file://")
        return None

    def shard_list(self) -> list[str]:
        """A directory reads the shards its ``index.json`` lists (see
        :mod:`torchseq.pretokenize`), else its ``*.tar`` / ``*.tar.gz`` files."""
        directory = self._directory()
        if directory is None:
            return super().shard_list()
        from torchseq.pretokenize import index_shards

        listed = index_shards(directory)
        if listed is not None:
            return listed
        found = sorted(str(p) for ext in ("*.tar", "*.tar.gz") for p in Path(directory).glob(ext))
        if not found:
            raise ShardNotFoundError(f"{directory}: directory holds no index.json and no .tar shards")
        return found

    def resolved_pad_id(self) -> int:
        """The pad id recorded by ``torchseq pretokenize`` beside the shards; 0 without one."""
        from torchseq.pretokenize import read_index

        directory = self._directory()
        if directory is None:
            shards = super().shard_list()
            if not shards or is_url(shards[0]):
                return 0
            directory = os.path.dirname(shards[0].removeprefix("file://")) or "."
        index = read_index(directory)
        return int(index["tokenizer"]["pad_id"]) if index is not None else 0

    def place(self, path: str, index: int, item: Any) -> str:
        key, members = item
        if "json" in members:
            return f"{path}::{key}.json"
        return f"{path}::{key}"

    def items(self, path: str, skip: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
        if path.endswith(".tar") and not is_url(path):
            # Local uncompressed shards (what pretokenize writes) take the fast
            # member reader; on anything it does not handle, tarfile takes over
            # from the first sample not yet delivered.
            fast = self._plain_items(path, skip)
            try:
                for index, item in fast:
                    skip = index
                    yield index, item
                return
            except (UnsupportedTar, OSError):
                pass
        yield from self._tarfile_items(path, skip, policy)

    def _plain_items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        index = 0
        key: str | None = None
        members: dict[str, bytes] = {}
        with open(path.removeprefix("file://"), "rb", buffering=1 << 20) as stream:
            for name, data in plain_members(stream):
                base, ext = _split_name(name)
                if base is None or base.startswith("__") or ext is None:
                    continue
                if base != key:
                    if key is not None:
                        index += 1
                        if index > skip:
                            yield index, (key, members)
                    key, members = base, {}
                members[ext] = data
            if key is not None:
                index += 1
                if index > skip:
                    yield index, (key, members)

    def _tarfile_items(self, path: str, skip: int, policy: ErrorPolicy) -> Iterator[tuple[int, Any]]:
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
        if self.fields is None:
            record = _decode_token_sample(path, key, members)
            if record is not None:
                return record
        obj: Any = {}
        extra: dict[str, Any] = {}
        tokens: dict[str, Any] = {}
        for ext, data in members.items():
            head, _, last = ext.rpartition(".")
            if last in PICKLE_EXTENSIONS:
                raise _member_error(
                    "pickle member refused: torchseq never unpickles shard content",
                    "unsafe content",
                    f"{path}::{key}.{ext}",
                )
            if ext == "json":
                try:
                    obj = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None
            elif last == "json":
                try:
                    extra[head] = decode_json(data)
                except RecordFormatError as exc:
                    raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None
            elif last == "txt":
                try:
                    extra[head or "txt"] = data.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise _member_error(
                        f"invalid UTF-8 at byte {bad.start}", "invalid utf-8", f"{path}::{key}.{ext}"
                    ) from None
            elif last == "npy":
                tokens[head] = _load_npy_member(path, key, ext, data)
            else:
                extra[ext] = data
        if isinstance(obj, dict):
            merged = {**obj, **extra}
            if tokens and "anchor" not in merged and self.fields is None:
                record = dict(merged)
            else:
                record = normalize(merged, self.fields)
        else:
            record = normalize(obj, self.fields)
            record.update(extra)
        if tokens:
            record["tokens"] = _gather_negatives(tokens)
        record.setdefault("__key__", key)
        return record


def _load_npy_member(path: str, key: str, ext: str, data: bytes) -> Any:
    try:
        return load_npy(data)
    except ValueError as exc:
        raise _member_error(f"invalid .npy member ({exc})", "invalid npy", f"{path}::{key}.{ext}") from None


def _gather_negatives(tokens: dict[str, Any]) -> dict[str, Any]:
    negatives = sorted((k for k in tokens if k.startswith("negatives.")), key=_negative_number)
    if negatives:
        tokens["negatives"] = [tokens.pop(k) for k in negatives]
    return tokens


def _decode_token_sample(path: str, key: str, members: dict[str, bytes]) -> Record | None:
    """The hot path for pre-tokenized samples (only ``.npy`` members); None for any other sample.

    Gives the record the general decoder would give: ``{"tokens": ..., "__key__": key}``.
    """
    tokens: dict[str, Any] = {}
    for ext, data in members.items():
        if not ext.endswith(".npy") or ext.count(".") > 2:
            return None
        tokens[ext[:-4]] = _load_npy_member(path, key, ext, data)
    if not tokens:
        return None
    return {"tokens": _gather_negatives(tokens), "__key__": key}


def _split_name(name: str) -> tuple[str | None, str | None]:
    """``webdataset``'s ``base_plus_ext`` (key up to the first dot of the file name), fast."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot > slash + 1:
        return name[:dot], name[dot + 1 :]
    base, ext = base_plus_ext(name)  # unusual names: the regex decides
    return base, ext

"""WebDataset tar shards (``.tar``, ``.tar.gz``, ...) as written by ``webdataset.TarWriter``.

Members are grouped into samples by key exactly as webdataset does (see
:mod:`torchseq.sources.tar`).

Members, per sample ``KEY``:

* ``KEY.json`` -- a record in any format of :mod:`torchseq.records`;
* ``KEY.<field>.txt`` -- a text field (``KEY.anchor.txt``, ``KEY.positive.txt``);
* ``KEY.<field>.json`` -- a JSON field (``KEY.negatives.json``);
* ``KEY.<field>.npy`` -- pre-tokenized ids for ``field``: parsed by a strict
  header check (plain numeric dtypes only) and read with ``numpy.frombuffer``;
  never ``numpy.load``, never unpickled; ``KEY.negatives.<k>.npy`` -- ids of hard negative ``k``
  (as ``torchseq pretokenize`` writes them);
* pickle members (``.pyd``, ``.pickle``, ``.pkl``, ``.pth``, ``.pt``, in any
  case, also under a compression suffix such as ``.pkl.gz``) are refused, never decoded;
* anything else is passed through as bytes under its extension.

A sample whose members add up to more than ``max_record_bytes`` is bad input;
its members are not read into memory.

A directory spec reads the shards listed by its ``index.json`` (written by
``torchseq pretokenize``; see :mod:`torchseq.sources.manifest`), else its
``.tar`` / ``.tar.gz`` files. Local uncompressed ``.tar`` shards go through the
fast member reader of :mod:`torchseq.sources.tar`; anything it does not handle
(and every damaged shard) is read again by :mod:`tarfile`, from the first
sample not yet delivered, which gives the errors described there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from torchseq.errors import ShardNotFoundError
from torchseq.records import Record, RecordFormatError, normalize
from torchseq.sources.base import ShardSource
from torchseq.sources.jsontext import BOM, decode_json
from torchseq.sources.manifest import manifest_pad_id, manifest_shards
from torchseq.sources.npy import decode_npy
from torchseq.sources.plaintar import UnsupportedTar
from torchseq.sources.spec import is_url, local_file
from torchseq.sources.tar import local_samples, stream_samples

#: Extensions of members that only a pickle loader reads (webdataset's ``pyd`` / ``pickle`` / ``pkl``,
#: ``torch.save``'s ``pth`` / ``pt``); refused in any case and under any compression suffix.
PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt"})
COMPRESSION_EXTENSIONS = frozenset({"gz", "gzip", "bz2", "xz", "lzma", "zst", "zstd", "lz4", "br", "z"})


@lru_cache(maxsize=1024)
def is_pickle(ext: str) -> bool:
    """Whether a member extension (``pyd``, ``extra.Pickle``, ``x.pkl.gz``, ...) names a pickle."""
    parts = ext.lower().split(".")
    while len(parts) > 1 and parts[-1] in COMPRESSION_EXTENSIONS:
        parts.pop()
    return parts[-1] in PICKLE_EXTENSIONS


def _member_error(message: str, reason: str, place: str) -> RecordFormatError:
    return RecordFormatError(message, reason, place)


@dataclass(frozen=True)
class WebDatasetSource(ShardSource):
    """Samples of WebDataset tar shards.

    State: see :class:`~torchseq.sources.base.ShardSource` (``index`` counts samples).
    """

    def _directory(self) -> str | None:
        """The local directory the spec names (alone, or as a one-item list), if it names one."""
        spec = self.spec
        if not isinstance(spec, (str, os.PathLike)) and len(spec) == 1:
            spec = spec[0]
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
        listed = manifest_shards(directory)
        if listed is not None:
            return [local_file(p) for p in listed]
        found = sorted(local_file(str(p)) for ext in ("*.tar", "*.tar.gz") for p in Path(directory).glob(ext))
        if not found:
            raise ShardNotFoundError(f"{directory}: directory holds no index.json and no .tar shards")
        return found

    def resolved_pad_id(self) -> int:
        """The pad id recorded by ``torchseq pretokenize`` beside the shards; 0 without one."""
        directory = self._directory()
        if directory is None:
            shards = super().shard_list()
            if not shards or is_url(shards[0]):
                return 0
            directory = os.path.dirname(shards[0].removeprefix("file://")) or "."
        return manifest_pad_id(directory)

    def place(self, path: str, index: int, item: Any) -> str:
        key, members, _ = item
        if "json" in members:
            return f"{path}::{key}.json"
        return f"{path}::{key}"

    def items(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        local = path.removeprefix("file://")
        limit = self.options.max_record_bytes
        if path.endswith(".tar") and not is_url(path) and os.path.isfile(local):
            try:
                for index, item in local_samples(local, path, skip, limit):
                    skip = index
                    yield index, item
                return
            except (UnsupportedTar, OSError):
                pass  # tarfile reads the rest, or says precisely what is wrong
        yield from stream_samples(path, self.options.opener, skip, limit)

    def decode(self, path: str, index: int, item: Any) -> Record:
        key, members, oversize = item
        if oversize is None and self.options.fields is None:
            fast = _decode_token_sample(path, key, members)
            if fast is not None:
                return fast
        if oversize is not None:
            ext, size = oversize
            raise _member_error(
                f"sample of more than {size} bytes exceeds max_record_bytes={self.options.max_record_bytes}",
                "record too large",
                f"{path}::{key}.{ext}",
            )
        obj: Any = {}
        extra: dict[str, Any] = {}
        tokens: dict[str, Any] = {}
        for ext, data in members.items():
            head, _, last = ext.rpartition(".")
            if is_pickle(ext):
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
                bom = 3 if data.startswith(BOM) else 0  # ignored, as in JSON
                try:
                    extra[head or "txt"] = (data[bom:] if bom else data).decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise _member_error(
                        f"invalid UTF-8 at byte {bad.start + bom}", "invalid utf-8", f"{path}::{key}.{ext}"
                    ) from None
            elif last == "npy":
                tokens[head] = _npy_member(path, key, ext, data)
            else:
                extra[ext] = data
        if isinstance(obj, dict):
            merged = {**obj, **extra}
            if tokens and "anchor" not in merged and self.options.fields is None:
                record: Record = dict(merged)
            else:
                record = normalize(merged, self.options.fields)
        else:
            record = normalize(obj, self.options.fields)
            if extra:  # field members may replace texts: check the result again
                record = normalize({**record, **extra})
        if tokens:
            record["tokens"] = _gather_negatives(tokens)
        record.setdefault("__key__", key)
        return record


def _npy_member(path: str, key: str, ext: str, data: bytes) -> Any:
    try:
        return decode_npy(data)
    except RecordFormatError as exc:
        raise _member_error(str(exc), exc.reason, f"{path}::{key}.{ext}") from None


def _negative_number(name: str) -> int:
    suffix = name.partition(".")[2]
    return int(suffix) if suffix.isdigit() else -1


def _gather_negatives(tokens: dict[str, Any]) -> dict[str, Any]:
    """``negatives.0``, ``negatives.1``, ... become the list ``negatives``."""
    negatives = sorted((k for k in tokens if k.startswith("negatives.")), key=_negative_number)
    if negatives:
        tokens["negatives"] = [tokens.pop(k) for k in negatives]
    return tokens


def _decode_token_sample(path: str, key: str, members: dict[str, bytes]) -> Record | None:
    """The hot path for pre-tokenized samples (only ``.npy`` members); None for any other sample.

    Gives the record the general decoder would give: ``{"tokens": ..., "__key__": key}``.
    """
    tokens: dict[str, Any] = {}
    negatives = False
    for ext, data in members.items():
        dots = ext.count(".")
        if dots > 2 or not ext.endswith(".npy"):
            return None
        negatives = negatives or dots == 2  # "negatives.<k>.npy"
        tokens[ext[:-4]] = _npy_member(path, key, ext, data)
    if not tokens:
        return None
    return {"tokens": _gather_negatives(tokens) if negatives else tokens, "__key__": key}



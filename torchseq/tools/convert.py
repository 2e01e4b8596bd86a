"""Convert corpora between JSON Lines and WebDataset tar shards (``torchseq convert``).

Records are read with torchseq's own readers (every input format of
:mod:`torchseq.records`; bad input raised or skipped per ``on_error``) and
written normalised:

* JSON Lines (``.jsonl``, plain or ``.gz``, ``.zst``, ``.bz2``, ``.xz``): one
  JSON object per line, ``{"anchor": ..., "positive": ..., "negatives"?: [...], ...extra}``;
* WebDataset (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.zst``, ``.tar.bz2``,
  ``.tar.xz``), written with ``webdataset.TarWriter``: per sample ``KEY.json``
  holding the same object, plus ``KEY.<field>.npy`` for pre-tokenized ids and
  ``KEY.<ext>`` for raw byte members.

These are exactly the names torchseq's readers read back (the tar names of
:data:`~torchseq.sources.reader.TAR_SUFFIXES`, JSON Lines in every compression
the readers undo); any other output suffix is refused before anything is read.

Output names: a single path, or a pattern with a ``%``-format for the shard
number (``out/train-%05d.tar``, as webdataset's ``ShardWriter``). With a
pattern, each input shard becomes one output shard unless
``records_per_shard`` re-shards. Files are written under a temporary name and
renamed when complete (:mod:`torchseq.tools.output`); existing outputs are
refused unless ``overwrite``.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import importlib.util
import io
import json
import lzma
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np

from torchseq.context import Context
from torchseq.errors import ConfigError, SkippedInput
from torchseq.records import Record
from torchseq.sources.fs import suffix_compression
from torchseq.sources.reader import TAR_SUFFIXES, is_tar_name, reader_for
from torchseq.sources.spec import expand_spec, is_url
from torchseq.tools.inspection import short_message
from torchseq.tools.output import open_temporary, remove_stale

#: The JSON Lines names convert writes: plain, and in each compression the readers undo.
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.bz2", ".jsonl.xz")


@dataclass
class ConvertReport:
    outputs: list[tuple[str, int]] = field(default_factory=list)  # (path, records)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[SkippedInput] = field(default_factory=list)
    dropped_fields: Counter[str] = field(default_factory=Counter)  # what the output format cannot hold


def _json_safe(record: Record, report: ConvertReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "__key__":
            continue
        if key == "tokens":
            out[key] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in value.items()}
        elif isinstance(value, (bytes, bytearray)):
            report.dropped_fields[key] += 1
        else:
            out[key] = value
    return out


def _tar_sample(record: Record, key: str, report: ConvertReport) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": key}
    body: dict[str, Any] = {}
    for name, value in record.items():
        if name == "__key__":
            continue
        if name == "tokens":
            for column, ids in value.items():
                if column == "negatives":  # ragged: no single .npy member holds it
                    report.dropped_fields["tokens.negatives"] += 1
                    continue
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(ids), allow_pickle=False)
                sample[f"{column}.npy"] = buffer.getvalue()
        elif isinstance(value, (bytes, bytearray)):
            sample[name] = bytes(value)
        else:
            body[name] = value
    sample["json"] = json.dumps(body, ensure_ascii=False).encode()
    return sample


def check_output(out: str) -> tuple[str, str | None]:
    """What ``out`` (a file name or ``%``-pattern) asks for: ``(format, compression)``.

    The format is ``"webdataset"`` or ``"jsonl"``, the compression ``"gzip"``,
    ``"zstd"``, ``"bz2"``, ``"xz"`` or ``None``; both follow the suffix, as the
    readers decide them.

    Raises:
        ConfigError: a directory, a URL, a suffix convert does not write, or a
            pattern without one integer field.
    """
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        base = out if out.endswith(("/", os.sep)) else out + "/"
        raise ConfigError(
            f"{out}: names a directory; OUT is an output file, or a pattern such as {base}train-%05d.tar"
        )
    if is_url(out):
        raise ConfigError(f"{out}: convert writes local files only; write them locally, then upload them")
    if not out.lower().endswith(JSONL_SUFFIXES + TAR_SUFFIXES):
        raise ConfigError(
            f"{out}: cannot write this format; convert writes JSON Lines ({', '.join(JSONL_SUFFIXES)}) "
            f"or WebDataset tar ({', '.join(TAR_SUFFIXES)}), as OUT's suffix says"
        )
    _output_names(out, 1)
    compression = suffix_compression(out)
    if compression == "zstd" and importlib.util.find_spec("zstandard") is None:
        raise ConfigError(f"{out}: writing zstd needs zstandard: pip install 'torchseq[zstd]'")
    return ("webdataset" if is_tar_name(out) else "jsonl"), compression


def _compressor(raw: IO[bytes], compression: str | None) -> IO[bytes]:
    """A stream that compresses into ``raw`` and leaves it open when closed."""
    if compression is None:
        return raw
    if compression == "gzip":  # no name, no time in the header: the same input gives the same bytes
        return cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0))
    if compression == "bz2":
        return bz2.BZ2File(raw, "wb")
    if compression == "xz":
        return lzma.LZMAFile(raw, "wb")
    import zstandard

    writer: IO[bytes] = zstandard.ZstdCompressor().stream_writer(raw, closefd=False)
    return writer


class _Writer:
    """One output shard, written under a temporary name and renamed on success."""

    def __init__(self, path: str, report: ConvertReport) -> None:
        self.path = path
        self.report = report
        self.count = 0
        self._last_key = ""
        kind, compression = check_output(path)
        remove_stale(os.path.dirname(path), glob.escape(os.path.basename(path)))
        self.tmp, self._raw = open_temporary(path)
        self._stream = _compressor(self._raw, compression)
        self._tar: Any = None
        if kind == "webdataset":
            from webdataset import TarWriter

            self._tar = TarWriter(self._stream, encoder=False, compress=False, mtime=0)

    def write(self, record: Record) -> None:
        if self._tar is not None:
            # Keep the input's key, unless it would merge with the previous sample
            # (webdataset groups consecutive members by key).
            key = str(record.get("__key__") or "")
            if not key or key == self._last_key:
                key = f"{self.count:09d}"
            self._last_key = key
            self._tar.write(_tar_sample(record, key, self.report))
        else:
            line = json.dumps(_json_safe(record, self.report), ensure_ascii=False).encode() + b"\n"
            self._stream.write(line)
        self.count += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()  # the end-of-archive blocks; leaves the stream open
        if self._stream is not self._raw:
            self._stream.close()  # the compressor's trailer; leaves the file open
        self._raw.close()
        os.replace(self.tmp, self.path)
        self.report.outputs.append((self.path, self.count))

    def abort(self) -> None:
        for handle in (self._tar, self._stream, self._raw):
            try:
                if handle is not None:
                    handle.close()
            except Exception:  # already failing; the temporary file is removed below
                pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def _output_names(out: str, count: int) -> list[str]:
    if "%" in out:
        try:
            return [out % k for k in range(count)]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{out}: output pattern needs one integer field such as %05d ({exc})") from None
    return [out] * count


def _check_outputs(names: list[str], inputs: list[str], overwrite: bool) -> None:
    for name in dict.fromkeys(names):
        if os.path.isdir(name):  # a name the pattern makes (OUT itself is checked first)
            raise ConfigError(f"{name}: an output shard's name is taken by a directory; remove it, or "
                              "choose another OUT")
        check_output(name)
        if os.path.abspath(name) in {os.path.abspath(p) for p in inputs}:
            raise ConfigError(f"{name}: output would overwrite an input shard")
        if os.path.exists(name) and not overwrite:
            raise ConfigError(f"{name}: exists; pass --overwrite (overwrite=True) to replace it")


def _records_by_shard(
    spec: Sequence[str], reader: str, fields: Mapping[str, str] | None, on_error: str,
    storage_options: Mapping[str, Any] | None, report: ConvertReport,
) -> tuple[list[str], Iterator[tuple[int, Record]]]:
    paths = expand_spec(list(spec), storage_options)
    cls = reader_for(paths, reader)

    def generate() -> Iterator[tuple[int, Record]]:
        for number, path in enumerate(paths):
            source = cls.create([path], fields=fields, on_error=on_error, storage_options=storage_options)
            running = source.open(Context(), {})
            for record in running.iterator:
                yield number, record
            counted = running.counters()
            report.skipped.update(counted.get("skipped", {}))
            for place, reason, message in counted.get("errors", []):
                report.errors.append(SkippedInput(place, reason, message))

    return paths, generate()


def convert(
    spec: str | Sequence[str],
    out: str,
    *,
    reader: str = "auto",
    records_per_shard: int | None = None,
    fields: Mapping[str, str] | None = None,
    on_error: str = "raise",
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> ConvertReport:
    """Convert the shards of ``spec`` into ``out`` (see the module docs).

    Raises:
        ConfigError: a bad output name (see :func:`check_output`), existing
            outputs without ``overwrite``.
        DataError: bad input under ``on_error="raise"`` (outputs completed so far stay).
        OSError: an output cannot be written (the message names it).
    """
    if records_per_shard is not None and records_per_shard < 1:
        raise ConfigError(f"records_per_shard must be >= 1, got {records_per_shard}")
    check_output(out)
    specs = [spec] if isinstance(spec, str) else list(spec)
    report = ConvertReport()
    paths, records = _records_by_shard(specs, reader, fields, on_error, storage_options, report)
    pattern = "%" in out
    if records_per_shard is None and pattern:
        names = _output_names(out, len(paths))
        _check_outputs(names, paths, overwrite)
    else:
        _check_outputs([out % 0 if pattern else out], paths, overwrite)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" records", desc="convert", mininterval=0.5, disable=None)
    writer: _Writer | None = None
    current = -1  # the input shard (or re-shard number) the writer belongs to
    try:
        for number, record in records:
            target = number if records_per_shard is None else report.records // records_per_shard
            if not pattern:
                target = 0
            if writer is None or target != current:
                if writer is not None:
                    writer.close()
                    writer = None
                name = out % target if pattern else out
                if pattern and records_per_shard is not None:
                    _check_outputs([name], paths, overwrite)
                writer, current = _Writer(name, report), target
            writer.write(record)
            report.records += 1
            if bar is not None:
                bar.update(1)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        if bar is not None:
            bar.close()
    return report


def format_convert_report(report: ConvertReport) -> str:
    lines = [f"wrote {report.records:,} records to {len(report.outputs)} shard(s):"]
    for path, count in report.outputs[:20]:
        lines.append(f"  {path}  {count:,} records  {os.path.getsize(path):,} bytes")
    if len(report.outputs) > 20:
        lines.append(f"  ... and {len(report.outputs) - 20} more")
    skipped = sum(report.skipped.values())
    lines.append(f"skipped: {skipped:,}" + (" (" + ", ".join(
        f"{r} {n:,}" for r, n in report.skipped.most_common()) + ")" if skipped else ""))
    for error in report.errors[:5]:
        lines.append(f"  e.g. {short_message(error)}")
    if report.dropped_fields:
        lines.append("dropped fields the output format cannot hold: " + ", ".join(
            f"{k} {n:,}" for k, n in report.dropped_fields.items()))
    return "\n".join(lines)

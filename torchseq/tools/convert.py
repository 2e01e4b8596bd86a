"""Convert corpora between JSON Lines and WebDataset tar shards (``torchseq convert``).

Records are read with torchseq's own readers (every input format of
:mod:`torchseq.records`; bad input raised or skipped per ``on_error``) and
written normalised:

* JSON Lines (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``): one JSON object per
  line, ``{"anchor": ..., "positive": ..., "negatives"?: [...], ...extra}``;
* WebDataset (``.tar``, ``.tar.gz``), written with ``webdataset.TarWriter``:
  per sample ``KEY.json`` holding the same object, plus ``KEY.<field>.npy``
  for pre-tokenized ids and ``KEY.<ext>`` for raw byte members.

Output names: a single path, or a pattern with a ``%``-format for the shard
number (``out/train-%05d.tar``, as webdataset's ``ShardWriter``). With a
pattern, each input shard becomes one output shard unless
``records_per_shard`` re-shards. Files are written under a temporary name and
renamed when complete; existing outputs are refused unless ``overwrite``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from torchseq.context import Context
from torchseq.errors import ConfigError, SkippedInput
from torchseq.records import Record
from torchseq.sources.reader import is_tar_name, reader_for
from torchseq.sources.spec import expand_spec
from torchseq.tools.inspection import short_message


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


class _Writer:
    """One output shard, written to ``path + '.tmp'`` and renamed on success."""

    def __init__(self, path: str, report: ConvertReport) -> None:
        self.path = path
        self.tmp = path + ".tmp"
        self.report = report
        self.count = 0
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._tar: Any = None
        self._file: IO[bytes] | None = None
        self._last_key = ""
        if is_tar_name(path):
            from webdataset import TarWriter

            self._raw = open(self.tmp, "wb")
            self._tar = TarWriter(self._raw, encoder=False, compress=path.endswith("gz"), mtime=0)
        elif path.endswith(".gz"):
            self._file = gzip.open(self.tmp, "wb", compresslevel=6)  # type: ignore[assignment]
        elif path.endswith(".zst"):
            import zstandard

            self._raw = open(self.tmp, "wb")
            self._file = zstandard.ZstdCompressor().stream_writer(self._raw)
        else:
            self._file = open(self.tmp, "wb")

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
            assert self._file is not None
            line = json.dumps(_json_safe(record, self.report), ensure_ascii=False).encode() + b"\n"
            self._file.write(line)
        self.count += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._raw.close()
        elif self._file is not None:
            self._file.close()
            if hasattr(self, "_raw"):
                self._raw.close()
        os.replace(self.tmp, self.path)
        self.report.outputs.append((self.path, self.count))

    def abort(self) -> None:
        for handle in (self._tar, self._file, getattr(self, "_raw", None)):
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
        ConfigError: bad output name, existing outputs without ``overwrite``.
        DataError: bad input under ``on_error="raise"`` (outputs written so far stay).
    """
    if records_per_shard is not None and records_per_shard < 1:
        raise ConfigError(f"records_per_shard must be >= 1, got {records_per_shard}")
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

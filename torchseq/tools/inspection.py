"""Look inside a corpus before training on it: what ``torchseq inspect`` reports.

One pass over the shards, in one process: per-shard record counts, the bad
input a reader would skip (by reason, with places), the record formats and
fields seen, token lengths per column (before truncation) with percentiles,
and the padding efficiency that fixed-size, length-bucketed and token-budget
batching would reach on these lengths -- computed by the real batching
stages, on stand-in records that carry only lengths.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchseq.errors import SKIP_HINT, ConfigError, SkippedInput, TorchseqError, data_error
from torchseq.records import TEXT_FIELDS, Record, RecordFormatError, detect_format
from torchseq.sources import WebDatasetSource, reader_for
from torchseq.sources.base import ShardFault, ShardSource, decode_json
from torchseq.sources.jsonl import OversizedLine
from torchseq.sources.remote import filesystem_for
from torchseq.sources.spec import expand_spec
from torchseq.stages import load_encoder, tokenizer_spec
from torchseq.tools.pretokenize import load_tokenizer
from torchseq.tools.simulate import PaddingResult, simulate_padding

PERCENTILES = (10, 50, 90, 99)
MAX_LISTED_ERRORS = 20
#: Long enough that no text is cut: lengths are reported before truncation.
UNTRUNCATED = 1 << 30


@dataclass
class ShardSummary:
    path: str
    size_bytes: int | None
    records: int = 0
    skipped: int = 0


@dataclass
class CorpusReport:
    spec: list[str]
    reader: str
    num_shards: int = 0
    shards: list[ShardSummary] = field(default_factory=list)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[SkippedInput] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)
    fields: Counter[str] = field(default_factory=Counter)
    unit: str = "characters"  # or "tokens"
    tokenizer: str | None = None
    max_length: int = 128
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    padding: list[PaddingResult] = field(default_factory=list)
    limited: bool = False  # stopped at ``limit`` records

    def length_table(self) -> dict[str, dict[str, float]]:
        """Per column: count, mean, percentiles, max and the share over ``max_length``."""
        table = {}
        for column, values in self.lengths.items():
            if not len(values):
                continue
            row: dict[str, float] = {"count": float(len(values)), "mean": float(values.mean())}
            for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
                row[f"p{q}"] = float(v)
            row["max"] = float(values.max())
            if self.unit == "tokens":
                row["over_max_length"] = float((values > self.max_length).mean())
            table[column] = row
        return table

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "reader": self.reader,
            "num_shards": self.num_shards,
            "shards": [vars(s) for s in self.shards],
            "records": self.records,
            "skipped": dict(self.skipped),
            "errors": [list(e) for e in self.errors],
            "formats": dict(self.formats),
            "fields": dict(self.fields),
            "unit": self.unit,
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "lengths": self.length_table(),
            "padding": [vars(p) for p in self.padding],
            "limited": self.limited,
        }


def _size(path: str, source: ShardSource) -> int | None:
    if "://" not in path or path.startswith("file://"):
        try:
            return os.path.getsize(path.removeprefix("file://"))
        except OSError:
            return None
    try:
        info = filesystem_for(path, source.options.storage_options).info(path)
        return int(info["size"]) if info.get("size") is not None else None
    except Exception:  # the size is a nicety; reading will report real problems
        return None


def _item_format(source: ShardSource, item: Any) -> str:
    """The format name of one raw item (a JSONL line, a tar sample)."""
    if isinstance(source, WebDatasetSource):
        _, members, _ = item
        layout = "+".join(sorted(members))
        if "json" in members:
            try:
                kind = detect_format(decode_json(members["json"]), source.options.fields)
            except RecordFormatError:
                kind = None
            return f"{layout} ({kind or 'unknown'})"
        return layout
    if isinstance(item, OversizedLine):
        return "unknown"
    try:
        return detect_format(decode_json(item), source.options.fields) or "unknown"
    except RecordFormatError:
        return "unknown"


def scan(source: ShardSource, paths: list[str], report: CorpusReport,
         limit: int | None = None, progress: Any = None) -> Iterator[Record]:
    """Yield the valid records of ``paths`` shard by shard, filling ``report`` on the way."""
    for path in paths:
        summary = ShardSummary(path, _size(path, source))
        report.shards.append(summary)
        try:
            for index, item in source.items(path, 0):
                if limit is not None and report.records >= limit:
                    report.limited = True
                    return
                try:
                    record = source.decode(path, index, item)
                except (RecordFormatError, TorchseqError) as exc:
                    reason = exc.reason
                    place = exc.place or source.place(path, index, item)
                    _skip(report, summary, SkippedInput(place, reason, str(data_error(place, str(exc), reason))))
                    continue
                report.formats[_item_format(source, item)] += 1
                summary.records += 1
                report.records += 1
                if progress is not None:
                    progress.update(1)
                yield record
        except ShardFault as fault:
            _skip(report, summary, SkippedInput(fault.place, fault.error.reason, str(fault.error)))


def _skip(report: CorpusReport, summary: ShardSummary, skipped: SkippedInput) -> None:
    summary.skipped += 1
    report.skipped[skipped.reason] += 1
    if len(report.errors) < MAX_LISTED_ERRORS:
        report.errors.append(skipped)


def _columns(record: Record) -> dict[str, Any]:
    return {name: record[name] for name in TEXT_FIELDS if name in record}


def _lengths_of(records: list[Record], encode: Any) -> list[dict[str, list[int]]]:
    """Per record and column, untruncated lengths (negatives: one per negative)."""
    texts: list[str] = []
    for record in records:
        for name, value in _columns(record).items():
            texts.extend(value if name == "negatives" else [value])
    counts = iter([len(ids) for ids in encode(texts)] if encode is not None else [len(t) for t in texts])
    out = []
    for record in records:
        lengths: dict[str, list[int]] = {}
        for name, value in _columns(record).items():
            lengths[name] = [next(counts) for _ in value] if name == "negatives" else [next(counts)]
        out.append(lengths)
    return out


def inspect_corpus(
    spec: str | Sequence[str],
    *,
    reader: str = "auto",
    tokenizer: Any = None,
    max_length: int = 128,
    batch_size: int = 64,
    max_tokens: int | None = None,
    limit: int | None = None,
    fields: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> CorpusReport:
    """Read a corpus once and describe it (see the module docs).

    Args:
        spec: shard spec, as for :func:`torchseq.read_jsonl`.
        reader: "jsonl", "webdataset" or "auto" (by the first shard's name).
        tokenizer: a ``tokenizer.json`` path or tokenizer object; without one,
            lengths are in characters and no padding is simulated.
        max_length: truncation length for the padding simulation.
        batch_size: batch size of ``batch`` and ``bucket``.
        max_tokens: budget of ``batch_by_tokens``; default ``batch_size * max_length``.
        limit: stop after this many valid records.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    paths = expand_spec(specs, storage_options)
    cls = reader_for(paths, reader)
    # A report of what is bad, however much: no tolerance limits.
    source = cls.create(specs, fields=fields, on_error="skip", max_errors=None, max_error_rate=None,
                        storage_options=storage_options)
    report = CorpusReport(specs, "webdataset" if cls is WebDatasetSource else "jsonl",
                          num_shards=len(paths), max_length=max_length)
    encode = None
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            load_tokenizer(tokenizer)  # an error naming the file, for a file that is no tokenizer
        encode = load_encoder(tokenizer_spec(tokenizer), UNTRUNCATED)[0]
        report.unit = "tokens"
        report.tokenizer = os.path.basename(tokenizer) if isinstance(tokenizer, str) else type(tokenizer).__name__
    bar = _progress(progress)
    columns: dict[str, list[int]] = {}
    stand_ins: list[Record] = []
    chunk: list[Record] = []

    def flush() -> None:
        for lengths in _lengths_of(chunk, encode):
            for name, values in lengths.items():
                columns.setdefault(name, []).extend(values)
            if encode is not None:
                stand_ins.append({"tokens": {
                    name: [range(min(n, max_length)) for n in values] if name == "negatives"
                    else range(min(values[0], max_length))
                    for name, values in lengths.items()
                }})
        chunk.clear()

    try:
        for record in scan(source, paths, report, limit, bar):
            report.fields.update(k for k in record if k not in ("tokens", "__key__"))
            chunk.append(record)
            if len(chunk) >= 1024:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    report.lengths = {name: np.asarray(values) for name, values in columns.items()}
    if stand_ins:
        budget = max_tokens or batch_size * max_length
        report.padding = simulate_padding(stand_ins, batch_size, budget)
    return report


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" records", desc="inspect", mininterval=0.5, disable=None)


# ----------------------------------------------------------------- text and plot
def _human_bytes(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover - the loop always returns


def short_message(error: SkippedInput, width: int = 150) -> str:
    """``place: what was wrong`` without the advice (the full message is in ``errors``)."""
    text = error.message.split(f"; or {SKIP_HINT}")[0]
    return text if len(text) <= width else text[: width - 3] + "..."


def format_report(report: CorpusReport) -> str:
    """The report as aligned text (what ``torchseq inspect`` prints)."""
    lines = []
    sizes = [s.size_bytes for s in report.shards]
    total = sum(s for s in sizes if s is not None) if any(s is not None for s in sizes) else None
    lines.append(f"reader:   {report.reader}")
    read = "" if len(report.shards) == report.num_shards else f", {len(report.shards)} read"
    lines.append(f"shards:   {report.num_shards}{read} ({_human_bytes(total)} read)")
    counts = [s.records for s in report.shards]
    if counts:
        lines.append(f"          records per shard: min {min(counts):,}, max {max(counts):,}")
    limited = " (stopped at --limit)" if report.limited else ""
    lines.append(f"records:  {report.records:,} valid, {sum(report.skipped.values()):,} skipped{limited}")
    for reason, n in report.skipped.most_common():
        lines.append(f"          skipped {reason}: {n:,}")
    for error in report.errors[:6]:
        lines.append(f"          e.g. {short_message(error)}")
    lines.append("formats:  " + ", ".join(f"{k} {n:,}" for k, n in report.formats.most_common()))
    lines.append("fields:   " + ", ".join(f"{k} {n:,}" for k, n in report.fields.most_common()))
    table = report.length_table()
    if table:
        where = f" ({report.tokenizer}, before truncation)" if report.unit == "tokens" else ""
        lines.append(f"lengths in {report.unit}{where}:")
        head = f"  {'column':<10}{'count':>9}{'mean':>8}" + "".join(f"{'p' + str(q):>7}" for q in PERCENTILES)
        head += f"{'max':>8}"
        if report.unit == "tokens":
            head += f"  > {report.max_length}"
        lines.append(head)
        for column, row in table.items():
            text = f"  {column:<10}{int(row['count']):>9,}{row['mean']:>8.1f}"
            text += "".join(f"{row[f'p{q}']:>7.0f}" for q in PERCENTILES) + f"{row['max']:>8,.0f}"
            if "over_max_length" in row:
                text += f"  {row['over_max_length']:.1%}"
            lines.append(text)
    if report.padding:
        lines.append(f"padding efficiency at max_length {report.max_length} "
                     "(real / padded tokens, all text columns):")
        for result in report.padding:
            lines.append(f"  {result.strategy:<24}{result.efficiency:>6.3f}   {result.batches:,} batches, "
                         f"mean size {result.mean_batch_size:.1f}")
    elif report.unit != "tokens":
        lines.append("(pass --tokenizer for token lengths and padding efficiency)")
    return "\n".join(lines)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise TorchseqError("--plot needs matplotlib: pip install 'torchseq[plot]'") from exc
    return plt


def check_plot_name(path: str) -> None:
    """Refuse a ``path`` whose suffix names no image format matplotlib writes.

    Raises:
        ConfigError: no suffix, or an unknown one (the message lists the known ones).
        TorchseqError: matplotlib is not installed.
    """
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if not suffix:
        raise ConfigError(f"--plot {path}: name the image file with its format's suffix, e.g. {path}.png")
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if suffix not in formats:
        raise ConfigError(f"--plot {path}: matplotlib writes no .{suffix} images; use one of "
                          + ", ".join(f".{name}" for name in formats))


def plot_lengths(report: CorpusReport, path: str) -> None:
    """Save a histogram of the length of each column to ``path``, in the format its suffix names.

    Raises:
        ConfigError: see :func:`check_plot_name`.
    """
    check_plot_name(path)
    plt = _pyplot()
    columns = [(name, values) for name, values in report.lengths.items() if len(values)]
    figure, axes = plt.subplots(len(columns), 1, figsize=(8, 2.6 * max(1, len(columns))), squeeze=False)
    for axis, (name, values) in zip(axes[:, 0], columns, strict=True):
        top = max(1, int(np.percentile(values, 99.5)))
        width = -(-top // 120)  # whole lengths per bin: integer data binned evenly, no aliasing
        bins = np.arange(0, top + width + 1, width) - 0.5
        axis.hist(np.minimum(values, top), bins=bins, color="#4c72b0")
        if report.unit == "tokens":
            axis.axvline(report.max_length, color="#c44e52", linestyle="--",
                         label=f"max_length {report.max_length}")
            axis.legend(loc="upper right")
        axis.set_title(f"{name}: {len(values):,} texts (the longest 0.5% are drawn at {top})")
        axis.set_xlabel(report.unit)
        axis.set_ylabel("texts")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

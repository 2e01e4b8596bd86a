"""``torchseq inspect``: shards, records, bad input, formats, lengths and padding of a corpus."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from torchseq.cli.options import add_reader_options, integer, reader_options

if TYPE_CHECKING:
    from torchseq.tools.inspection import CorpusReport

SUMMARY = "describe a corpus: shards, records, bad input, formats, lengths, padding"
DESCRIPTION = (
    "Reads a corpus once (in this process) and reports: shards and records per shard; "
    "input a reader would skip, by reason and place; record formats and fields; text "
    "lengths per column with percentiles (tokens before truncation with --tokenizer, "
    "characters without); and the padding efficiency of batch / bucket / "
    "batch_by_tokens at the given sizes, computed by torchseq's own batching stages. "
    "Exits 1 (after the report) when a shard was not found or no valid record was read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="shards: paths, globs, brace ranges or URLs")
    parser.add_argument("--tokenizer", help="tokenizer.json (token lengths and padding efficiency)")
    parser.add_argument("--max-length", type=integer(1), default=128,
                        help="truncation for the padding simulation (128)")
    parser.add_argument("--batch-size", type=integer(1), default=64, help="batch size of batch/bucket (64)")
    parser.add_argument("--max-tokens", type=integer(1),
                        help="token budget of batch_by_tokens (batch size x max length)")
    parser.add_argument("--limit", type=integer(1), help="stop after this many valid records")
    parser.add_argument("--plot", metavar="FILE.png", help="save a length histogram per column")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_reader_options(parser)


def run(args: argparse.Namespace) -> int:
    from torchseq.cli import UsageError
    from torchseq.errors import ConfigError, TorchseqError
    from torchseq.tools.inspection import check_plot_name, format_report, inspect_corpus, plot_lengths

    if args.plot:  # before the corpus is read, not after
        try:
            check_plot_name(args.plot)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        directory = os.path.dirname(args.plot)
        if directory and not os.path.isdir(directory):
            raise TorchseqError(f"--plot {args.plot}: directory {directory} not found; create it, "
                                "or save the plot elsewhere")
    report = inspect_corpus(
        args.spec,
        tokenizer=args.tokenizer,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        limit=args.limit,
        progress=not args.no_progress,
        **reader_options(args),
    )
    plot = args.plot if args.plot and report.records else None
    if plot:
        plot_lengths(report, plot)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    if plot:
        print(f"length histogram: {plot}", file=sys.stderr)
    problem = _problem(report)
    if problem:
        print(f"torchseq inspect: {problem}", file=sys.stderr)
        return 1
    return 0


def _problem(report: CorpusReport) -> str | None:
    """Why the report, though printed, is a failure: shards not found, or nothing valid read."""
    missing = report.skipped.get("missing shard", 0)
    if missing:
        places = [e.place for e in report.errors if e.reason == "missing shard"][:3]
        more = ", ..." if missing > len(places) else ""
        return f"{missing} shard(s) not found: {', '.join(places)}{more}; check the paths"
    if not report.records:
        skipped = sum(report.skipped.values())
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in report.skipped.most_common())
        detail = f": {reasons}" if reasons else ""
        return (f"no valid records in {report.num_shards} shard(s) ({skipped:,} skipped{detail}); "
                "the report above says why")
    return None

"""``torchseq inspect``: shards, records, bad input, formats, lengths and padding of a corpus."""

from __future__ import annotations

import argparse
import json
import sys

from torchseq.cli.options import add_reader_options, reader_options

SUMMARY = "describe a corpus: shards, records, bad input, formats, lengths, padding"
DESCRIPTION = (
    "Reads a corpus once (in this process) and reports: shards and records per shard; "
    "input a reader would skip, by reason and place; record formats and fields; text "
    "lengths per column with percentiles (tokens before truncation with --tokenizer, "
    "characters without); and the padding efficiency of batch / bucket / "
    "batch_by_tokens at the given sizes, computed by torchseq's own batching stages."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="shards: paths, globs, brace ranges or URLs")
    parser.add_argument("--tokenizer", help="tokenizer.json (token lengths and padding efficiency)")
    parser.add_argument("--max-length", type=int, default=128, help="truncation for the padding simulation (128)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of batch/bucket (64)")
    parser.add_argument("--max-tokens", type=int, help="token budget of batch_by_tokens (batch size x max length)")
    parser.add_argument("--limit", type=int, help="stop after this many valid records")
    parser.add_argument("--plot", metavar="FILE.png", help="save a length histogram per column")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_reader_options(parser)


def run(args: argparse.Namespace) -> int:
    from torchseq.tools.inspection import format_report, inspect_corpus, plot_lengths

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
    if args.plot:
        plot_lengths(report, args.plot)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    if args.plot:
        print(f"length histogram: {args.plot}", file=sys.stderr)
    return 0

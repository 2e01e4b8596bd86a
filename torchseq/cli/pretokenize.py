"""``torchseq pretokenize``: tokenize pair shards once into WebDataset shards of token ids."""

from __future__ import annotations

import argparse
import json

from torchseq.cli.options import add_reader_options, integer, reader_options

SUMMARY = "tokenize pair shards once into WebDataset shards of token ids plus an index"
DESCRIPTION = (
    "Reads SPEC (JSONL or WebDataset shards: a path, glob, brace range or list), tokenizes "
    "every text with TOKENIZER exactly as Pipeline.tokenize() does, and writes "
    "OUT/shard-NNNNN.tar (uint16 ids when the vocabulary fits) and OUT/index.json. "
    "Read them back with ts.read_webdataset(OUT): no tokenizer work at all. Files are "
    "written under temporary names and renamed when all are complete (index.json last): a "
    "failed or interrupted run leaves nothing that looks complete, and a re-run cleans up "
    "after it. Earlier output in OUT is replaced only with --overwrite."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="input shards")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json path")
    parser.add_argument("--max-length", type=integer(1), required=True, help="truncate to this many tokens")
    parser.add_argument("--out", required=True, help="output directory (new, or without earlier output)")
    parser.add_argument("--shard-size", type=integer(1), default=10_000, help="records per output shard")
    parser.add_argument("--on-error", choices=("raise", "skip", "warn"), default="raise")
    parser.add_argument("--overwrite", action="store_true", help="replace the output of an earlier run in OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_reader_options(parser)


def run(args: argparse.Namespace) -> int:
    from torchseq.tools.pretokenize import pretokenize

    spec = args.spec[0] if len(args.spec) == 1 else args.spec
    index = pretokenize(
        spec, args.tokenizer, args.max_length, args.out,
        on_error=args.on_error, shard_size=args.shard_size, overwrite=args.overwrite,
        progress=not args.no_progress, **reader_options(args),
    )
    summary = {
        "out": args.out,
        "records": index["num_records"],
        "shards": len(index["shards"]),
        "dtype": index["dtype"],
        "pad_id": index["tokenizer"]["pad_id"],
    }
    print(json.dumps(summary))
    return 0

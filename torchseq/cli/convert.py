"""``torchseq convert``: JSON Lines <-> WebDataset tar shards, compressed as OUT's suffix says."""

from __future__ import annotations

import argparse

from torchseq.cli.options import add_reader_options, integer, reader_options

SUMMARY = "convert shards between JSON Lines and WebDataset tar"
DESCRIPTION = (
    "Reads shards with torchseq's readers (any supported record format) and writes "
    "normalised records: JSON Lines (.jsonl, .jsonl.gz, .jsonl.zst, .jsonl.bz2, .jsonl.xz) "
    "or WebDataset tar (.tar, .tar.gz, .tgz, .tar.zst, .tar.bz2, .tar.xz; KEY.json members, "
    "written with webdataset.TarWriter): what OUT's suffix says; any other suffix is refused. "
    "OUT is one file, or a pattern such as out/train-%%05d.tar: one output shard per input "
    "shard, or per --records-per-shard records."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="input shards: paths, globs, brace ranges or URLs")
    parser.add_argument("out", help="output file or %%-pattern (out/train-%%05d.tar)")
    parser.add_argument("--records-per-shard", type=integer(1), help="re-shard: records per output shard")
    parser.add_argument("--on-error", choices=["raise", "skip", "warn"], default="raise",
                        help="bad input: stop (default), or skip and count it")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_reader_options(parser)


def run(args: argparse.Namespace) -> int:
    from torchseq.cli import UsageError
    from torchseq.errors import ConfigError
    from torchseq.tools.convert import check_output, convert, format_convert_report

    try:
        check_output(args.out)  # before anything is read
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    report = convert(
        args.spec,
        args.out,
        records_per_shard=args.records_per_shard,
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        **reader_options(args),
    )
    print(format_convert_report(report))
    return 0

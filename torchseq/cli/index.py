"""``torchseq index SPEC``: count the records of every shard once and cache the counts.

With ``--world-size`` and ``--batch-size`` it also prints what each remainder
policy does to one epoch: batches per rank, records dropped, repeated or
carried into the next epoch.
"""

from __future__ import annotations

import argparse
import time

from torchseq.cli.options import add_reader_options, integer, reader_options

SUMMARY = "count the records of every shard and cache the counts (for len() and equal batches)"
DESCRIPTION = (
    "Counts the records of every shard named by SPEC and caches the counts beside the "
    "shards (.torchseq-index.json) or, when that directory is read-only or remote, in "
    "the cache directory ($TORCHSEQ_CACHE_DIR, default ~/.cache/torchseq). A shard whose "
    "size or modification time changed is counted again."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="+", help="shard paths, URLs, globs or brace ranges")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="a shard that cannot be read: stop (default) or count what is readable")
    parser.add_argument("--rebuild", action="store_true", help="count every shard again")
    parser.add_argument("--world-size", type=integer(1), help="ranks, to show each policy's epoch")
    parser.add_argument("--batch-size", type=integer(1), help="records per batch, with --world-size")
    parser.add_argument("--epoch", type=integer(0), default=0, help="epoch to show (only 'wrap' varies)")
    parser.add_argument("--quiet", action="store_true", help="no per-shard lines")
    add_reader_options(parser)


def run(args: argparse.Namespace) -> int:
    from torchseq.cli import UsageError
    from torchseq.pipeline import Pipeline
    from torchseq.plan import POLICIES
    from torchseq.sources import expand_spec, reader_for
    from torchseq.sources.index import index_paths, shard_counts

    if (args.world_size is None) != (args.batch_size is None):
        raise UsageError("--world-size and --batch-size go together: give both, or neither")
    options = reader_options(args)
    reader, storage_options = options.pop("reader"), options["storage_options"]
    source = reader_for(expand_spec(args.spec, storage_options), reader).create(
        args.spec, on_error=args.on_error, **options)
    shards = source.shard_list()
    start = time.perf_counter()
    counts = shard_counts(source, shards, rebuild=args.rebuild)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        width = max(len(s) for s in shards)
        for shard, count in zip(shards, counts, strict=True):
            print(f"{shard:<{width}}  {count:>12,}")
    print(f"{sum(counts):,} records in {len(shards):,} shards ({elapsed:.2f}s)")
    for path in index_paths(source, shards):
        print(f"index: {path}")
    if args.world_size is None and args.batch_size is None:
        return 0
    print(f"\none epoch (epoch {args.epoch}) with world size {args.world_size}, batch size {args.batch_size}:")
    print(f"{'policy':<8} {'batches/rank':>12} {'delivered':>10} {'dropped':>8} {'repeated':>9} "
          f"{'carried in':>10} {'carried out':>11}")
    batched = Pipeline(source).batch(args.batch_size)
    for policy in POLICIES:
        report = batched.balance(policy).balance_report(world_size=args.world_size, epoch=args.epoch)
        print(f"{policy:<8} {report['batches_per_rank']:>12,} {report['delivered']:>10,} "
              f"{report['dropped']:>8,} {report['repeated']:>9,} {report['carried_in']:>10,} "
              f"{report['carried_out']:>11,}")
    return 0

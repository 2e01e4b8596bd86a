"""What ``unique=`` costs per record in each batching stage, and how often it defers.

Tokenizes the corpus once, repeats it ``--repeat`` times (so every text occurs
that often, as in mixtures of overlapping datasets), then times each batching
stage with and without ``unique=True`` on the records in memory: interleaved
rounds, medians in microseconds per record. Also prints the deferral counters
of one pass on the corpus as it is.

    python benchmarks/bench_unique.py                      # ../shared/data/debian-pairs, 2 shards
    python benchmarks/bench_unique.py --sample             # the bundled sample
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torchseq as ts
from torchseq.batching import Batch, BucketBatch, TokenBudgetBatch
from torchseq.batching.unique import Unique
from torchseq.context import Context
from torchseq.tools.sample import sample_shards, sample_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def per_record(stage: Any, records: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    delivered = sum(len(b) for b in stage.open(iter(records), Context(), {}).iterator)
    assert delivered == len(records)
    return (time.perf_counter() - start) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", action="store_true", help="use the bundled sample")
    parser.add_argument("--shards", type=int, default=2, help="debian-pairs shards to read")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.sample:
        spec, tokenizer = sample_shards(), sample_tokenizer()
    else:
        spec = [str(SHARED / "debian-pairs" / f"train-{k:05d}.jsonl.gz") for k in range(args.shards)]
        tokenizer = str(SHARED / "tokenizer" / "tokenizer.json")
    corpus = list(ts.read_jsonl(spec).tokenize(tokenizer, max_length=128))
    records = corpus * args.repeat
    stages = {
        "batch(64)": (Batch(64), Batch(64, unique=Unique())),
        "bucket(64)": (BucketBatch(64), BucketBatch(64, unique=Unique())),
        "batch_by_tokens(8192)": (TokenBudgetBatch(8192), TokenBudgetBatch(8192, unique=Unique())),
    }
    times: dict[str, list[float]] = {f"{name} {kind}": [] for name in stages for kind in ("plain", "unique")}
    for _ in range(args.rounds):
        for name, (plain, unique) in stages.items():
            times[f"{name} plain"].append(per_record(plain, records))
            times[f"{name} unique"].append(per_record(unique, records))
    print(f"{len(corpus):,} records x {args.repeat}, {args.rounds} interleaved rounds, median us/record")
    for name in stages:
        plain = statistics.median(times[f"{name} plain"])
        unique = statistics.median(times[f"{name} unique"])
        print(f"  {name:22s} plain {plain:6.2f}  unique {unique:6.2f}  (+{unique - plain:.2f})")
    pipe = ts.read_jsonl(spec).tokenize(tokenizer, max_length=128).bucket(64, unique=True)
    batches = sum(1 for _ in pipe)
    counters = ts.pipeline_counters(pipe.state_dict())
    print(f"bucket(64, unique=True) on the corpus as it is: {batches} batches, "
          + ", ".join(f"{k.removeprefix('unique.')} {v}" for k, v in counters.items()))


if __name__ == "__main__":
    main()

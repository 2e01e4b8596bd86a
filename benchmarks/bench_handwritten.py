"""torchseq vs a hand-written IterableDataset + tokenizer collate_fn.

Same data (../shared/data/debian-pairs, 61,750 pairs in 8 .jsonl.gz shards),
same tokenizer.json, batch 64, max_length 128, DataLoader workers 0 and 2.
Rounds are interleaved (A, B, A, B, ...) so machine noise hits both systems
alike; the script prints per-system medians and the ratio of medians.

    python benchmarks/bench_handwritten.py --rounds 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

import tokenizers
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import torchseq as ts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHARDS = sorted(str(p) for p in (DATA / "debian-pairs").glob("train-*.jsonl.gz"))
TOKENIZER = str(DATA / "tokenizer" / "tokenizer.json")
BATCH, MAX_LENGTH = 64, 128


class HandWrittenPairs(IterableDataset[tuple[str, str]]):
    """What people write by hand: shards split over workers, json per line."""

    def __init__(self, shards: list[str]) -> None:
        self.shards = shards

    def __iter__(self) -> Any:
        info = get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in shards:
            with gzip.open(shard, "rt", encoding="utf-8") as f:
                for line in f:
                    anchor, positive = json.loads(line)[:2]
                    yield anchor, positive


class TokenizerCollate:
    def __init__(self, path: str) -> None:
        self.path = path
        self.tok: Any = None

    def __call__(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        if self.tok is None:
            self.tok = tokenizers.Tokenizer.from_file(self.path)
            self.tok.enable_truncation(MAX_LENGTH)
            self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        out = {}
        for name, texts in (("anchor", [p[0] for p in pairs]), ("positive", [p[1] for p in pairs])):
            encodings = self.tok.encode_batch(texts)
            out[name] = {
                "input_ids": torch.tensor([e.ids for e in encodings]),
                "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
            }
        return out


def handwritten(workers: int) -> DataLoader[Any]:
    return DataLoader(HandWrittenPairs(SHARDS), batch_size=BATCH, num_workers=workers,
                      collate_fn=TokenizerCollate(TOKENIZER))


def torchseq_loader(workers: int) -> DataLoader[Any]:
    pipe = ts.read_jsonl(SHARDS).tokenize(TOKENIZER, max_length=MAX_LENGTH).batch(BATCH).collate()
    return DataLoader(pipe, batch_size=None, num_workers=workers)


def timed(loader: DataLoader[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    pairs = sum(batch["anchor"]["input_ids"].shape[0] for batch in loader)
    return time.perf_counter() - start, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # same single-threaded tokenizer for both
    systems = {"handwritten": handwritten, "torchseq": torchseq_loader}
    print(f"{len(SHARDS)} shards, batch {BATCH}, max_length {MAX_LENGTH}, {args.rounds} interleaved rounds")
    print(f"{'workers':>7} {'system':>12} {'median s':>9} {'pairs/s':>9} {'ratio':>6}")
    for workers in args.workers:
        times: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, make in systems.items():
                seconds, pairs = timed(make(workers))
                assert pairs == 61750, f"{name} delivered {pairs} pairs"
                times[name].append(seconds)
        base = statistics.median(times["handwritten"])
        for name in systems:
            med = statistics.median(times[name])
            print(f"{workers:>7} {name:>12} {med:>9.2f} {61750 / med:>9.0f} {base / med:>6.2f}")


if __name__ == "__main__":
    main()

"""What exact resume costs while training: StatefulDataLoader snapshots every step by default.

    python -m benchmarks.snapshots [--rounds 3] [--shards 2]

The recommended pipeline (shuffle -> tokenize -> bucket(64) -> collate, 2
workers) over ``--shards`` debian-pairs shards, one epoch per run, through a
plain ``DataLoader``, a ``StatefulDataLoader`` with its default snapshot every
step, and one snapshotting every 100 steps; shuffle buffers of 1,000 and
10,000. Interleaved rounds; medians. Also the cost of one snapshot in one
process (``state_dict()``, pickling it as the worker queue does, unpickling
it as the main process does), averaged over 50 steps mid-epoch.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from benchmarks.common import BATCH_SIZE, JSONL_SHARDS, MAX_LENGTH, TOKENIZER

HERE = Path(__file__).resolve().parent
LOADERS = {
    "DataLoader": lambda pipe: DataLoader(pipe, batch_size=None, num_workers=2),
    "StatefulDataLoader, snapshot every step": lambda pipe: StatefulDataLoader(pipe, batch_size=None, num_workers=2),
    "StatefulDataLoader, every 100 steps": lambda pipe: StatefulDataLoader(
        pipe, batch_size=None, num_workers=2, snapshot_every_n_steps=100),
}


def pipeline(shards: list[str], buffer: int) -> ts.Pipeline:
    return (ts.read_jsonl(shards).shuffle(buffer, seed=0).tokenize(TOKENIZER, MAX_LENGTH)
            .bucket(BATCH_SIZE).collate())


def one_snapshot(shards: list[str], buffer: int) -> dict[str, float]:
    pipe = pipeline(shards[:1], buffer)
    batches = iter(pipe)
    totals = {"state_dict_ms": 0.0, "pickle_ms": 0.0, "unpickle_ms": 0.0, "mbytes": 0.0}
    steps = 0
    for step in range(60):
        next(batches)
        start = time.perf_counter()
        state = pipe.state_dict()
        encoded = time.perf_counter()
        blob = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        pickled = time.perf_counter()
        pickle.loads(blob)
        done = time.perf_counter()
        if step >= 10:  # the first snapshots encode the whole buffer and pool
            steps += 1
            totals["state_dict_ms"] += (encoded - start) * 1e3
            totals["pickle_ms"] += (pickled - encoded) * 1e3
            totals["unpickle_ms"] += (done - pickled) * 1e3
            totals["mbytes"] += len(blob) / 1e6
    return {name: value / steps for name, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "snapshots.json"))
    args = parser.parse_args()
    shards = JSONL_SHARDS[: args.shards]
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for buffer in (1_000, 10_000):
            for name, make in LOADERS.items():
                start = time.perf_counter()
                batches = sum(1 for _ in make(pipeline(shards, buffer)))
                times.setdefault(f"{name} | shuffle {buffer:,}", []).append(time.perf_counter() - start)
                assert batches > 0
    result: dict[str, Any] = {
        "shards": args.shards,
        "epoch_seconds": {name: {"median": statistics.median(v), "runs": v} for name, v in times.items()},
        "one_snapshot": {f"shuffle {b:,}": one_snapshot(shards, b) for b in (1_000, 10_000)},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, entry in result["epoch_seconds"].items():
        print(f"{name:60s} {entry['median']:.2f} s  runs {[round(x, 2) for x in entry['runs']]}")
    print(json.dumps(result["one_snapshot"], indent=1))


if __name__ == "__main__":
    main()

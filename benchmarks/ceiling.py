"""How fast can any loader deliver these batches with 2 DataLoader workers? The transport ceiling.

    python -m benchmarks.ceiling [--rounds 7] [--time-shards 4]

The pre-tokenized target of issue 5 (>= 20x tokenize-on-the-fly, 2 workers)
asks for a rate; this measures the most a ``DataLoader(batch_size=None,
num_workers=2)`` can deliver on this machine when the workers do no work at
all. The exact batches of the pre-tokenized run (read once, up front, with 0
workers) are served from memory by an ``IterableDataset`` whose workers take
every other batch, so only worker start-up, pickling and the queues are left.
Rounds are interleaved with the real pre-tokenized pipeline (2 workers, fresh
``DataLoader`` each time). The on-the-fly rate to compare with is the median
of ``torchseq`` with 2 workers in ``benchmarks/results.json``
(``python -m benchmarks.compare``), same shards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from benchmarks.common import JSONL_SHARDS
from benchmarks.systems import batch_size_of, make_torchseq_pretokenized

HERE = Path(__file__).resolve().parent


class ServeBatches(IterableDataset[Any]):
    """Ready batches from memory; worker ``i`` of ``n`` yields batches ``i, i+n, ...``."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        if info is None:
            return iter(self.batches)
        return iter(self.batches[info.id :: info.num_workers])


def epoch_seconds(loader: Iterable[Any]) -> tuple[float, int]:
    start = time.perf_counter()
    pairs = sum(batch_size_of(batch) for batch in loader)
    return time.perf_counter() - start, pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--time-shards", type=int, default=4)
    parser.add_argument("--out", default=str(HERE / "ceiling.json"))
    args = parser.parse_args()
    shards = JSONL_SHARDS[: args.time_shards]
    batches = list(make_torchseq_pretokenized(shards, 0))
    pairs = sum(batch_size_of(b) for b in batches)
    times: dict[str, list[float]] = {"floor": [], "ceiling": [], "pretokenized": []}
    for _ in range(args.rounds):
        for name in times:
            if name == "floor":  # as many items, each an int: the DataLoader alone
                start = time.perf_counter()
                items = sum(1 for _ in DataLoader(ServeBatches(list(range(len(batches)))), batch_size=None,
                                                  num_workers=2))
                times[name].append(time.perf_counter() - start)
                assert items == len(batches)
                continue
            loader = (DataLoader(ServeBatches(batches), batch_size=None, num_workers=2) if name == "ceiling"
                      else make_torchseq_pretokenized(shards, 2))
            seconds, delivered = epoch_seconds(loader)
            assert delivered == pairs, (name, delivered, pairs)
            times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result: dict[str, Any] = {"pairs": pairs, "batches": len(batches), "times": times, "medians": medians,
                              "pairs_per_s": {name: pairs / m for name, m in medians.items() if name != "floor"}}
    compare = HERE / "results.json"
    if compare.exists():
        runs = json.loads(compare.read_text())
        on_the_fly = runs["summary"].get("torchseq|2", {}).get("median_seconds")
        if on_the_fly and runs["info"].get("time_shards") == args.time_shards:
            result["on_the_fly_2w_seconds"] = on_the_fly
            result["ceiling_over_on_the_fly"] = on_the_fly / medians["ceiling"]
            result["pretokenized_over_on_the_fly"] = on_the_fly / medians["pretokenized"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "times"}, indent=1))


if __name__ == "__main__":
    main()

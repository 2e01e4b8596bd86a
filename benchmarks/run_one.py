"""One measurement in a fresh process: ``python -m benchmarks.run_one SYSTEM WORKERS MODE``.

MODE ``time`` prints the seconds from ``iter(loader)`` to the last batch and the
pairs delivered; ``verify`` collects every row and compares the multiset with
the reference tokenization. Prints one JSON line. compare.py runs this.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from benchmarks.common import JSONL_SHARDS, Row, compare_rows, reference_rows
from benchmarks.systems import SYSTEMS, batch_size_of, rows_of


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("workers", type=int)
    parser.add_argument("mode", choices=("time", "verify"))
    parser.add_argument("--shards", type=int, default=len(JSONL_SHARDS))
    args = parser.parse_args()
    shards = JSONL_SHARDS[: args.shards]
    loader = SYSTEMS[args.system](shards, args.workers)
    result: dict[str, object] = {"system": args.system, "workers": args.workers, "mode": args.mode,
                                 "shards": len(shards)}
    if args.mode == "time":
        start = time.perf_counter()
        first = None
        pairs = 0
        for batch in loader:
            if first is None:
                first = time.perf_counter() - start
            pairs += batch_size_of(batch)
        result.update(seconds=time.perf_counter() - start, pairs=pairs, first_batch_seconds=first)
    else:
        rows: Counter[Row] = Counter()
        for batch in loader:
            rows.update(rows_of(batch))
        result.update(compare_rows(rows, reference_rows(shards)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

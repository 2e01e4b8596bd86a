"""Two checkouts of torchseq against each other, interleaved in one run: did a change cost speed?

    python -m benchmarks.before_after --before ../baseline --rounds 5

``--before`` is another checkout (e.g. ``git archive <commit> | tar -x -C ../baseline``);
this checkout is "after". Each round runs, for each tree in turn (the order
alternates by round), every configuration in a fresh process with that
tree's own ``benchmarks`` and ``torchseq`` (``cwd`` and ``PYTHONPATH`` set to
the tree):

* ``python -m benchmarks.run_one SYSTEM WORKERS time`` for torchseq on the
  fly and pre-tokenized, with 0 and 2 DataLoader workers, and the fastest
  peers (a hand-written IterableDataset, torchdata.nodes; 2 workers), so that each
  tree's torchseq / peer ratio comes from the same round;
* the pass-through stage cost of ``benchmarks.overhead`` (µs per element per
  stage, from the slope over chains of 0-8 stages).

Prints, per configuration, the median of the per-round after/before ratios of
throughput (pairs/s) and of torchseq / best-peer, and writes
benchmarks/before_after.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
CONFIGS = [("torchseq", 0), ("torchseq", 2), ("torchseq pretokenized", 0), ("torchseq pretokenized", 2),
           ("hand-written", 2), ("torchdata.nodes", 2)]
PEERS = ("hand-written", "torchdata.nodes")
STAGE_PROBE = (
    "import json, warnings; warnings.filterwarnings('ignore');"
    "from benchmarks.overhead import pass_through; print(json.dumps(pass_through(rounds=3)))"
)


def _env(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree), TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1")


def _run(tree: Path, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, *args], cwd=tree, env=_env(tree), capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time-shards", type=int, default=4)
    parser.add_argument("--out", default=str(HERE / "before_after.json"))
    args = parser.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": AFTER}
    for tree in trees.values():  # build each tree's pre-tokenized cache outside the timing
        _run(tree, ["-c", "from benchmarks.common import JSONL_SHARDS, pretokenized_dir; "
                          "pretokenized_dir(JSONL_SHARDS); print('{}')"])
    rates: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    stage: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_number in range(args.rounds):
        order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
        for name in order:
            tree = trees[name]
            for system, workers in CONFIGS:
                result = _run(tree, ["-m", "benchmarks.run_one", system, str(workers), "time",
                                     "--shards", str(args.time_shards)])
                rate = result["pairs"] / result["seconds"]
                rates[name].setdefault(f"{system}|{workers}", []).append(rate)
                print(f"round {round_number} {name:>6} {system:>22} x{workers}: {rate:,.0f} pairs/s", flush=True)
            stage[name].append(_run(tree, ["-c", STAGE_PROBE]))
            print(f"round {round_number} {name:>6} stage: {stage[name][-1]}", flush=True)

    def per_round(name: str, key: str) -> list[float]:
        return rates[name][key]

    report: dict[str, Any] = {"command": " ".join(["python -m benchmarks.before_after", *sys.argv[1:]]),
                              "rounds": args.rounds, "time_shards": args.time_shards, "configs": {}}
    for system, workers in CONFIGS:
        key = f"{system}|{workers}"
        pairs = [a / b for a, b in zip(per_round("after", key), per_round("before", key), strict=True)]
        entry = {
            "before_median_pairs_per_s": statistics.median(per_round("before", key)),
            "after_median_pairs_per_s": statistics.median(per_round("after", key)),
            "after_over_before_median": statistics.median(pairs),
        }
        if system.startswith("torchseq") and workers == 2:
            best = {name: [max(rates[name][f"{p}|2"][r] for p in PEERS) for r in range(args.rounds)]
                    for name in trees}
            over = {name: [t / b for t, b in zip(per_round(name, key), best[name], strict=True)]
                    for name in trees}
            entry["over_best_peer_before"] = statistics.median(over["before"])
            entry["over_best_peer_after"] = statistics.median(over["after"])
        report["configs"][key] = entry
    report["pass_through_us"] = {
        name: {kind: statistics.median(r[kind] for r in stage[name]) for kind in stage[name][0]} for name in trees
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

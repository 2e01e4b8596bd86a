"""torchseq against the loaders people use instead, on the same data, in one run.

    python -m benchmarks.compare --rounds 3 --time-shards 4

Systems (benchmarks/systems.py): torchseq (tokenize on the fly, and from
``torchseq pretokenize`` shards), a hand-written IterableDataset + tokenizer
collate_fn, Hugging Face ``datasets`` streaming with batched ``map``,
``webdataset`` with ``map`` (on the ``.tar.gz`` copy of the corpus), torch
DataPipes, ``torchdata.nodes``, and the fast tokenizer alone on texts already in
memory (``tokenizers.encode_batch``, single process, one thread). All: same
``tokenizer.json``, batch 64, max_length 128, DataLoader workers 0 and 2.

1. Verify: every system x workers runs one epoch over the whole dev corpus
   (../shared/data/debian-pairs, 61,750 pairs); the multiset of delivered
   (anchor ids, positive ids) rows must equal the reference tokenization
   (``Tokenizer.from_file; enable_truncation(128); encode(text).ids``): every
   pair exactly once, ids identical.
2. Time: ``--rounds`` interleaved rounds; each round runs every system x
   workers once, in a fresh process each, in a rotated order. Medians per
   system, ratios of medians.

Writes benchmarks/results.json and benchmarks/compare.png; RESULTS.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = [
    ("tokenizer alone", 0),
    *[(name, w) for name in ("torchseq", "torchseq pretokenized", "hand-written", "hf datasets",
                             "webdataset", "datapipes", "torchdata.nodes") for w in (0, 2)],
]
PEERS = ("hand-written", "hf datasets", "webdataset", "datapipes", "torchdata.nodes")


def run_one(system: str, workers: int, mode: str, shards: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_one", system, str(workers), mode, "--shards", str(shards)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system} x{workers} {mode} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time-shards", type=int, default=8, help="shards per timed epoch (1-8)")
    parser.add_argument("--verify-shards", type=int, default=8,
                        help="shards per verification epoch of torchseq and the tokenizer baseline")
    parser.add_argument("--peer-verify-shards", type=int, default=None,
                        help="shards per verification epoch of the peers (default: --time-shards)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these systems (for trying the script)")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()

    from benchmarks.common import JSONL_SHARDS, pretokenized_dir, reference_rows

    started = time.time()
    info: dict[str, Any] = {"command": " ".join(["python -m benchmarks.compare", *sys.argv[1:]]),
                            "cpus": os.cpu_count(), "load_start": load()}
    t = time.perf_counter()
    reference_rows(JSONL_SHARDS[: args.verify_shards])
    peer_verify_shards = args.peer_verify_shards or args.time_shards
    reference_rows(JSONL_SHARDS[: args.time_shards])
    reference_rows(JSONL_SHARDS[:peer_verify_shards])
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only]
    t = time.perf_counter()
    pretokenized_dir(JSONL_SHARDS)
    info["pretokenize_seconds_if_built"] = round(time.perf_counter() - t, 1)

    verify: list[dict[str, Any]] = []
    if not args.skip_verify:
        for system, workers in configs:
            shards = peer_verify_shards if system in PEERS else args.verify_shards
            result = run_one(system, workers, "verify", shards)
            ok = result["missing"] == 0 and result["unexpected"] == 0 and result["delivered"] == result["expected"]
            result["ok"] = ok
            verify.append(result)
            print(f"verify {system:>22} x{workers}: {'OK' if ok else 'MISMATCH'} {result}", flush=True)

    times: dict[str, list[dict[str, Any]]] = {f"{s}|{w}": [] for s, w in configs}
    loads = []
    for round_number in range(args.rounds):
        shift = round_number * 5 % len(configs)
        order = configs[shift:] + configs[:shift]
        for system, workers in order:
            result = run_one(system, workers, "time", args.time_shards)
            result["load"] = load()
            times[f"{system}|{workers}"].append(result)
            print(f"round {round_number} {system:>22} x{workers}: {result['seconds']:.2f}s "
                  f"{result['pairs'] / result['seconds']:,.0f} pairs/s (load {result['load']})", flush=True)
        loads.append(load())

    summary = {}
    for key, runs in times.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        summary[key] = {
            "median_seconds": seconds,
            "pairs": runs[0]["pairs"],
            "pairs_per_second": runs[0]["pairs"] / seconds,
            "median_first_batch_seconds": statistics.median(r["first_batch_seconds"] for r in runs),
            "seconds": [r["seconds"] for r in runs],
        }

    def rate(system: str, workers: int) -> float:
        entry = summary.get(f"{system}|{workers}")
        return float(entry["pairs_per_second"]) if entry else float("nan")

    present = [p for p in PEERS if f"{p}|2" in summary] or [PEERS[0]]
    best_peer = {w: max(present, key=lambda p, w=w: rate(p, w)) for w in (0, 2)}  # type: ignore[misc]
    ratios = {
        "torchseq_2w_over_best_peer_2w": rate("torchseq", 2) / rate(best_peer[2], 2),
        "torchseq_0w_over_best_peer_0w": rate("torchseq", 0) / rate(best_peer[0], 0),
        "torchseq_2w_over_tokenizer_alone": rate("torchseq", 2) / rate("tokenizer alone", 0),
        "torchseq_0w_over_tokenizer_alone": rate("torchseq", 0) / rate("tokenizer alone", 0),
        "pretokenized_2w_over_torchseq_2w": rate("torchseq pretokenized", 2) / rate("torchseq", 2),
        "pretokenized_0w_over_torchseq_0w": rate("torchseq pretokenized", 0) / rate("torchseq", 0),
        "torchseq_2w_over_0w": rate("torchseq", 2) / rate("torchseq", 0),
        "best_peer_2w_over_tokenizer_alone": rate(best_peer[2], 2) / rate("tokenizer alone", 0),
    }
    info.update(load_end=load(), loads_after_rounds=loads, minutes=round((time.time() - started) / 60, 1),
                rounds=args.rounds, time_shards=args.time_shards, verify_shards=args.verify_shards,
                peer_verify_shards=peer_verify_shards,
                best_peer={str(k): v for k, v in best_peer.items()})
    report = {"info": info, "verify": verify, "summary": summary, "ratios": ratios}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"ratios": ratios, "best_peer": best_peer}, indent=1))
    plot(report, Path(args.out).with_name("compare.png"))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    names = ["tokenizer alone", "torchseq", "torchseq pretokenized", *PEERS]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.4
    for offset, workers in ((-width / 2, 0), (width / 2, 2)):
        values = [summary.get(f"{n}|{workers}", {}).get("pairs_per_second", float("nan")) for n in names]
        bars = ax.bar([i + offset for i in range(len(names))], values, width, label=f"{workers} workers")
        for bar, value in zip(bars, values, strict=True):
            if value == value:  # not NaN
                ax.annotate(f"{value / 1000:.1f}k", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("pairs / s (median, log scale)")
    info = report["info"]
    ax.set_title(f"debian-pairs, batch 64, max_length 128 — median of {info['rounds']} interleaved rounds "
                 f"({info['time_shards']} of 8 shards)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

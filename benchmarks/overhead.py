"""Pipeline overhead: cost of a pass-through stage, time to first batch, memory as data grows.

    python -m benchmarks.overhead

1. Pass-through stage: 1,000,000 ints from memory through k = 0, 2, 4, 8
   pass-through stages; the slope of time over k is the cost per element per
   stage. For torchseq (a stage that is a generator, and ``.map(identity)``),
   torch DataPipes (``.map(identity)``) and a plain Python generator chain.
   Median of 5 interleaved runs.
2. Time to first batch with 2 DataLoader workers (fresh workers each time,
   pipeline described beforehand): median of 5 runs.
3. Peak RSS (main process and the largest worker) for 1x and 10x the data,
   each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import JSONL_SHARDS, MAX_LENGTH, ROOT, TOKENIZER, pretokenized_dir

N = 1_000_000


@dataclass(frozen=True)
class PassThrough:
    """The smallest real torchseq stage: opened, it runs a generator over its upstream."""

    def open(self, upstream: Iterator[Any], ctx: Any, state: Any) -> Any:
        from torchseq.protocol import Stateless

        return Stateless(self._pass(upstream))

    @staticmethod
    def _pass(upstream: Iterator[Any]) -> Iterator[Any]:
        for item in upstream:  # noqa: UP028 - the per-element loop is what is measured
            yield item


@dataclass(frozen=True)
class ListSource:
    """A source over a list in memory."""

    data: list[int]

    def open(self, ctx: Any, state: Any) -> Any:
        from torchseq.protocol import Stateless

        return Stateless(iter(self.data))


def identity(x: Any) -> Any:
    return x


def torchseq_chain(k: int, kind: str) -> Callable[[], int]:
    from torchseq.pipeline import Pipeline

    pipe = Pipeline(ListSource(list(range(N))))
    for _ in range(k):
        pipe = pipe._then(PassThrough()) if kind == "generator" else pipe.map(identity)
    return lambda: sum(1 for _ in pipe)


def datapipes_chain(k: int) -> Callable[[], int]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    pipe: Any = IterableWrapper(list(range(N)))
    for _ in range(k):
        pipe = pipe.map(identity)
    return lambda: sum(1 for _ in pipe)


def generator_chain(k: int) -> Callable[[], int]:
    data = list(range(N))

    def stage(upstream: Iterator[int]) -> Iterator[int]:
        for item in upstream:  # noqa: UP028 - the per-element loop is what is measured
            yield item

    def run() -> int:
        it: Iterator[int] = iter(data)
        for _ in range(k):
            it = stage(it)
        return sum(1 for _ in it)

    return run


def pass_through(rounds: int = 5) -> dict[str, float]:
    import warnings

    warnings.filterwarnings("ignore")
    makers: dict[str, Callable[[int], Callable[[], int]]] = {
        "torchseq stage (generator)": lambda k: torchseq_chain(k, "generator"),
        "torchseq .map(identity)": lambda k: torchseq_chain(k, "map"),
        "torch DataPipes .map(identity)": datapipes_chain,
        "plain Python generator": generator_chain,
    }
    ks = (0, 2, 4, 8)
    times: dict[tuple[str, int], list[float]] = {(name, k): [] for name in makers for k in ks}
    runs = {(name, k): make(k) for name, make in makers.items() for k in ks}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            assert run() == N
            times[key].append(time.perf_counter() - start)
    out = {}
    for name in makers:
        medians = [statistics.median(times[(name, k)]) for k in ks]
        slope = statistics.linear_regression(ks, medians).slope
        out[name] = slope / N * 1e6  # microseconds per element per stage
    return out


def first_batch(rounds: int = 5) -> dict[str, float]:
    from torch.utils.data import DataLoader

    import torchseq as ts

    pretok = pretokenized_dir(JSONL_SHARDS)
    pipes = {
        "jsonl -> tokenize -> batch(64) -> collate": ts.read_jsonl(JSONL_SHARDS).tokenize(TOKENIZER, MAX_LENGTH)
        .batch(64).collate(),
        "jsonl -> tokenize -> bucket(64) -> collate": ts.read_jsonl(JSONL_SHARDS).tokenize(TOKENIZER, MAX_LENGTH)
        .bucket(64).collate(),
        "pretokenized -> batch(64) -> collate": ts.read_webdataset(pretok).batch(64).collate(),
        "pretokenized -> bucket(64) -> collate": ts.read_webdataset(pretok).bucket(64).collate(),
    }
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(rounds):
        for name, pipe in pipes.items():
            loader = DataLoader(pipe, batch_size=None, num_workers=2)
            start = time.perf_counter()
            iterator = iter(loader)
            next(iterator)
            times[name].append(time.perf_counter() - start)
            del iterator
    return {name: statistics.median(values) for name, values in times.items()}


def memory_child(kind: str, repeat: int) -> None:
    """Run one epoch with 2 workers and print peak RSS (MiB) of main and largest worker."""
    from torch.utils.data import DataLoader

    import torchseq as ts

    if kind == "on the fly":
        pipe = ts.read_jsonl(JSONL_SHARDS[:2] * repeat).shuffle(buffer_size=10_000).tokenize(
            TOKENIZER, MAX_LENGTH).bucket(64).collate()
    else:
        shards = sorted(str(p) for p in Path(pretokenized_dir(JSONL_SHARDS)).glob("*.tar"))
        pipe = ts.read_webdataset(shards * repeat).shuffle(buffer_size=10_000).bucket(64).collate()
    pairs = sum(b["anchor"]["input_ids"].shape[0] for b in DataLoader(pipe, batch_size=None, num_workers=2))
    # VmHWM belongs to this process image (ru_maxrss would carry the parent's
    # high-water mark across exec); the workers are forked, so RUSAGE_CHILDREN
    # gives the largest of them.
    status = Path("/proc/self/status").read_text().split("\n")
    main = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"pairs": pairs, "main_mib": main, "worker_mib": worker}))


def memory() -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    for kind in ("on the fly", "pretokenized"):
        for repeat in (1, 10):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--memory-child", kind, str(repeat)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            out[f"{kind} x{repeat}"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "REPEAT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "overhead.json"))
    parser.add_argument("--parts", nargs="+", default=["stage", "first-batch", "memory"],
                        choices=["stage", "first-batch", "memory"])
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result["load_start"] = open("/proc/loadavg").read().split()[:3]
    if "stage" in args.parts:
        result["pass_through_us_per_element_per_stage"] = pass_through()
        print(json.dumps(result["pass_through_us_per_element_per_stage"], indent=1), flush=True)
    if "first-batch" in args.parts:
        result["first_batch_seconds_2_workers"] = first_batch()
        print(json.dumps(result["first_batch_seconds_2_workers"], indent=1), flush=True)
    if "memory" in args.parts:
        result["peak_rss"] = memory()
        print(json.dumps(result["peak_rss"], indent=1), flush=True)
    result["load_end"] = open("/proc/loadavg").read().split()[:3]
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

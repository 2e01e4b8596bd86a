"""Records dropped or repeated per epoch under each remainder policy, measured under DDP.

Runs under ``torchrun`` (gloo, CPU). Every rank iterates the pipeline with
``DataLoader(num_workers=...)`` and ``all_reduce``s on each step, like a
training loop; rank 0 gathers what every rank delivered, compares it with
the source read directly, and prints, per policy and epoch: steps per rank,
records delivered, never delivered, and delivered more than once, next to
the plan's own report.

    torchrun --nproc_per_node=2 benchmarks/balance_remainder.py \\
        --batch-size 64 --num-workers 2 --epochs 2
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import torchseq as ts
from torchseq.plan import POLICIES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-pairs"


def key(record: dict[str, Any]) -> int:
    """A pair's identity (the corpus has no duplicate pairs)."""
    digest = hashlib.blake2b(f"{record['anchor']}\x00{record['positive']}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=str(DATA / "train-{00000..00007}.jsonl.gz"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # The whole source, read as a world of one (not this rank's part of it).
    whole = ts.read_jsonl(args.shards).with_topology(0, 1)
    source = Counter(key(r) for r in whole) if rank == 0 else Counter()
    if rank == 0:
        print(f"{sum(source.values()):,} records, {world_size} ranks x {args.num_workers} workers, "
              f"batch size {args.batch_size}")
        print(f"{'policy':<8} {'epoch':>5} {'steps/rank':>10} {'delivered':>10} {'missing':>8} "
              f"{'repeated':>9}   plan: dropped / repeated / carried in / carried out")
    for policy in POLICIES:
        pipe = ts.read_jsonl(args.shards).shuffle(buffer_size=10_000, seed=0).batch(args.batch_size)
        pipe = pipe.balance(policy)
        loader = DataLoader(pipe, batch_size=None, num_workers=args.num_workers)
        for epoch in range(args.epochs):
            pipe.set_epoch(epoch)
            steps, keys = 0, []
            for batch in loader:
                flag = torch.ones(1)
                dist.all_reduce(flag)
                steps += 1
                keys.extend(key(r) for r in batch)
            everyone: list[Any] = [None] * world_size
            dist.all_gather_object(everyone, (steps, keys))
            if rank == 0:
                step_counts = sorted({s for s, _ in everyone})
                delivered = Counter(k for _, ks in everyone for k in ks)
                missing = sum(1 for k in source if k not in delivered)
                repeated = sum(c - 1 for c in delivered.values() if c > 1)
                foreign = sum(1 for k in delivered if k not in source)
                report = pipe.balance_report()
                steps_text = "/".join(str(s) for s in step_counts)
                print(f"{policy:<8} {epoch:>5} {steps_text:>10} {sum(delivered.values()):>10,} "
                      f"{missing:>8,} {repeated:>9,}   plan: {report['dropped']} / {report['repeated']} / "
                      f"{report['carried_in']} / {report['carried_out']}"
                      + (f"  ({foreign} unknown records!)" if foreign else ""))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

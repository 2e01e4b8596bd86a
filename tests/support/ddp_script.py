"""Run by ``torchrun`` from ``test_ddp.py``: every balance scenario under real DDP.

Each rank builds the pipelines, iterates them with ``DataLoader(num_workers=2)``
and calls ``all_reduce`` on every step, as a training loop would: a rank that
runs out of batches early leaves the others blocked in ``all_reduce`` (the
process group's timeout turns that hang into an error). Each rank writes
what it delivered to ``OUT.RANK.json``.

Usage: ``torchrun --nproc_per_node=2 ddp_script.py CONFIG.json OUT``
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import torchseq as ts
from torchseq.errors import BalanceWarning


def guids(batch: Any) -> list[int]:
    if isinstance(batch, dict):
        return [int(g) for g in batch["guid"]]
    return [int(r["guid"]) for r in batch]


def scenarios(shards: list[str], tokenizer: str) -> dict[str, tuple[Any, int]]:
    """name -> (pipeline, epochs)."""
    read = ts.read_jsonl(shards).shuffle(buffer_size=64, seed=3)
    tokens = read.tokenize(tokenizer, max_length=32)
    return {
        "bucket-partial": (tokens.bucket(16, pool_batches=4).collate(), 1),
        "batch-drop": (read.batch(16).balance("drop"), 1),
        "bucket-pad": (tokens.bucket(16, pool_batches=4).collate().balance("pad"), 1),
        "batch-wrap": (read.batch(16).balance("wrap"), 3),
        "tokens-partial": (tokens.batch_by_tokens(max_tokens=640, pool_size=256).collate(), 1),
        # A filter the record counts cannot foresee: the step guard repeats batches.
        "filter-partial": (read.filter(lambda r: r["guid"] % 7 != 0).batch(16), 1),
    }


def main(config_path: str, out: str) -> None:
    with open(config_path) as f:
        config = json.load(f)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    results: dict[str, Any] = {}
    for name, (pipe, epochs) in scenarios(config["shards"], config["tokenizer"]).items():
        loader = DataLoader(pipe, batch_size=None, num_workers=2)
        runs = []
        for epoch in range(epochs):
            pipe.set_epoch(epoch)
            delivered: list[int] = []
            steps = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BalanceWarning)  # the filter scenario warns (in workers)
                for batch in loader:
                    flag = torch.ones(1)
                    dist.all_reduce(flag)  # blocks forever if another rank ran out
                    steps += 1
                    delivered.extend(guids(batch))
            total = torch.tensor([steps])
            dist.all_reduce(total)
            runs.append({
                "steps": steps,
                "all_steps": int(total),
                "len": len(pipe),
                "report": pipe.balance_report(),
                "guids": delivered,
            })
        results[name] = runs
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""DDP contrastive training with global in-batch negatives over a source-homogeneous mixture.

Run with torchrun (CPU, gloo):

    torchrun --nproc_per_node=2 examples/ddp_contrastive.py --max-steps 100

Every rank reads its own share of the data, but draws the *same source* at
the same step (the mixture's schedule depends only on seed, epoch and step),
so the embeddings gathered from all ranks for the loss share a source: each
anchor is scored against the positives of every rank (global batch 2 x 32),
and none of its negatives comes from an easier, different domain. The script
checks the source agreement at every step.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from contrastive import embed_columns, info_nce, tiny_bert
from torch.nn.parallel import DistributedDataParallel
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from torchseq.tools.sample import sample_shards, sample_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args()


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated; the backward pass returns each rank the gradient of its own rows.

    Every rank's loss uses every rank's rows, so a row's gradient is the sum
    over ranks of the gradients flowing into it: an all-reduce, then a slice.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        width = max(counts)
        padded = F.pad(x, (0, 0, 0, width - x.shape[0])).contiguous()
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.counts = counts
        return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.counts[: dist.get_rank()])
        return grad[start : start + ctx.counts[dist.get_rank()]], None


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows of ``x`` (differentiable) and the offset of this rank's rows.

    Batches may differ in size across ranks (duplicate-free batching can cut
    a batch short), so sizes are exchanged first.
    """
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]]))
    counts = [int(s) for s in sizes]
    rows = _GatherRows.apply(x, counts)
    return rows, sum(counts[: dist.get_rank()])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    shards = sample_shards()

    def source(spec: list[str], seed: int) -> ts.Pipeline:
        return (ts.read_jsonl(spec).shuffle(buffer_size=1_000, seed=seed)
                .tokenize(sample_tokenizer(), max_length=args.max_length)
                .bucket(args.batch_size, unique=True)
                .collate(pad_to_multiple_of=8))

    # Two sources standing in for two datasets, drawn 3:1 as whole batches.
    pipe = ts.mix({"desc": source(shards[:2], 0), "more-desc": source(shards[2:], 1)},
                  weights=[3, 1], level="batch", stop="never", seed=0)
    names = list(pipe.source.targets)  # type: ignore[attr-defined]
    loader = StatefulDataLoader(pipe, batch_size=None, num_workers=args.num_workers)
    model = DistributedDataParallel(tiny_bert())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    meter = ts.BatchMeter(targets=pipe.source.targets, world_size=world_size)  # type: ignore[attr-defined]
    losses: list[float] = []
    agreed = 0
    start = time.perf_counter()
    # stop="never": the mixture cycles its sources, so one "epoch" runs until max_steps.
    for step, batch in zip(range(1, args.max_steps + 1), loader, strict=False):
        meter.update(batch)
        source_id = torch.tensor([names.index(batch["dataset"][0])])
        everyone = [torch.zeros_like(source_id) for _ in range(world_size)]
        dist.all_gather(everyone, source_id)
        if len({int(s) for s in everyone}) != 1:
            raise RuntimeError(f"step {step}: ranks drew different sources {everyone}")
        agreed += 1
        anchors, positives = embed_columns(model, batch["anchor"], batch["positive"])
        positives, offset = gather_with_grad(positives)
        targets = torch.arange(len(anchors)) + offset
        loss = info_nce(anchors, positives, targets)
        optimizer.zero_grad()
        # Each rank's loss covers its own anchors against all positives; DDP
        # averages the gradients, so this trains on the mean over the global batch.
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if rank == 0 and (step % args.log_every == 0 or step == args.max_steps):
            stats = meter.summary()
            window = losses[-args.log_every:]
            print(f"step {step:4d} loss {sum(window) / len(window):.3f} source {names[int(everyone[0])]!r} on all "
                  f"{world_size} ranks | global negatives/anchor {stats['negatives_per_anchor']:.0f}, "
                  f"{stats.get('pairs_per_s', 0) * world_size:,.0f} pairs/s (all ranks)", flush=True)
    head = max(1, len(losses) // 10)
    first, last = sum(losses[:head]) / head, sum(losses[-head:]) / head
    if rank == 0:
        stats = meter.summary()
        shares = {n: (round(stats.get(f"source/{n}", 0.0), 3), round(stats[f"target/{n}"], 3)) for n in names}
        print(f"loss fell from {first:.3f} to {last:.3f} in {time.perf_counter() - start:.0f}s; "
              f"same source on all ranks at {agreed}/{len(losses)} steps; (share, target) {shares}")
        print("RESULT " + json.dumps({"steps": len(losses), "agreed_steps": agreed, "first_loss": first,
                                      "last_loss": last, "world_size": world_size, **stats}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

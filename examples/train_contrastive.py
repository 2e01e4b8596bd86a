"""Contrastive training in a plain PyTorch loop, with in-batch negatives.

A tiny BERT (built from a config, random weights) learns to match the bundled
sample's short package descriptions with their long ones. Batches are
length-bucketed and duplicate-free (``unique=True``: a repeated text in a batch
would be a false negative); the loop logs the loss and the data statistics.

    python examples/train_contrastive.py                 # ~300 steps, a few minutes on CPU
    python examples/train_contrastive.py --max-steps 40  # a quick look
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from contrastive import embed_columns, info_nce, tiny_bert
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from torchseq.tools.sample import sample_shards, sample_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (a model this small only loses time to more)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pipe = (
        ts.read_jsonl(sample_shards())
        .shuffle(buffer_size=2_000, seed=args.seed)
        .tokenize(sample_tokenizer(), max_length=args.max_length)
        .bucket(batch_size=args.batch_size, unique=True)
        .collate(pad_to_multiple_of=8)
    )
    # StatefulDataLoader: loader.state_dict() is a checkpoint of the data position,
    # and it carries the stages' counters (duplicate deferrals here).
    loader = StatefulDataLoader(pipe, batch_size=None, num_workers=args.num_workers)
    model = tiny_bert(seed=args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    meter = ts.BatchMeter()
    losses: list[float] = []
    step, epoch = 0, 0
    start = time.perf_counter()
    while step < args.max_steps:
        pipe.set_epoch(epoch)
        for batch in loader:
            meter.update(batch)
            anchors, positives = embed_columns(model, batch["anchor"], batch["positive"])
            loss = info_nce(anchors, positives, torch.arange(len(anchors)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % args.log_every == 0 or step == args.max_steps:
                window = losses[-args.log_every:]
                stats = meter.summary()
                counters = ts.pipeline_counters(loader.state_dict())
                print(f"step {step:4d} epoch {epoch} loss {sum(window) / len(window):.3f} | "
                      f"{stats.get('pairs_per_s', 0):,.0f} pairs/s, padding efficiency "
                      f"{stats['padding_efficiency']:.2f}, {stats['negatives_per_anchor']:.0f} negatives/anchor, "
                      f"{counters.get('unique.deferrals', 0)} duplicates deferred", flush=True)
            if step == args.max_steps:
                break
        epoch += 1
    head = max(1, len(losses) // 10)
    first, last = sum(losses[:head]) / head, sum(losses[-head:]) / head
    print(f"loss fell from {first:.3f} (first {head} steps) to {last:.3f} (last {head}) "
          f"in {time.perf_counter() - start:.0f}s")
    counters = ts.pipeline_counters(loader.state_dict())
    print("RESULT " + json.dumps({"steps": step, "first_loss": first, "last_loss": last, **meter.summary(),
                                  **counters}))


if __name__ == "__main__":
    main()

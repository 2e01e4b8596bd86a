"""``torchseq demo``: the bundled sample through read -> shuffle -> tokenize -> bucket -> collate."""

from __future__ import annotations

import argparse
import time
from typing import Any

from torch.utils.data import DataLoader

from torchseq.cli.options import integer

SUMMARY = "stream the bundled sample pairs and report throughput and padding"
DESCRIPTION = (
    "Streams the bundled sample (4,000 real pairs, 4 shards) through "
    "read_jsonl -> shuffle -> tokenize -> bucket -> collate with DataLoader workers, "
    "then prints pairs/s, padding efficiency and one decoded batch."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-workers", type=integer(0), default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--batch-size", type=integer(1), default=64)
    parser.add_argument("--max-length", type=integer(1), default=128)
    parser.add_argument("--epochs", type=integer(1), default=2)


def run(args: argparse.Namespace) -> int:
    import tokenizers

    from torchseq.pipeline import read_jsonl
    from torchseq.tools.sample import sample_shards, sample_tokenizer

    tokenizer_file = sample_tokenizer()
    pipe = (
        read_jsonl(sample_shards())
        .shuffle(buffer_size=2000, seed=0)
        .tokenize(tokenizer_file, max_length=args.max_length)
        .bucket(batch_size=args.batch_size)
        .collate(pad_to_multiple_of=8)
    )
    print(pipe)
    loader = DataLoader(pipe, batch_size=None, num_workers=args.num_workers)
    last: dict[str, Any] = {}
    for epoch in range(args.epochs):
        pipe.set_epoch(epoch)
        start = time.perf_counter()
        pairs = real = padded = batches = 0
        for batch in loader:
            batches += 1
            pairs += batch["anchor"]["input_ids"].shape[0]
            for column in ("anchor", "positive"):
                mask = batch[column]["attention_mask"]
                real += int(mask.sum())
                padded += mask.numel()
            last = batch
        elapsed = time.perf_counter() - start
        print(
            f"epoch {epoch}: {pairs} pairs in {batches} batches, {elapsed:.2f}s "
            f"({pairs / elapsed:,.0f} pairs/s with {args.num_workers} workers), "
            f"padding efficiency {real / padded:.3f} (real tokens / padded tokens)"
        )
    decoder = tokenizers.Tokenizer.from_file(tokenizer_file)
    ids = last["anchor"]["input_ids"]
    print(f"\nlast batch: anchor {tuple(ids.shape)}, positive {tuple(last['positive']['input_ids'].shape)}")
    for row in range(min(3, ids.shape[0])):
        anchor = decoder.decode(last["anchor"]["input_ids"][row].tolist())
        positive = decoder.decode(last["positive"]["input_ids"][row].tolist())
        print(f"  anchor:   {anchor}\n  positive: {positive[:160]}{'...' if len(positive) > 160 else ''}")
    return 0

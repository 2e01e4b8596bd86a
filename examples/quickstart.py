"""The quick start of the README on the bundled sample: a plain PyTorch loop.

    python examples/quickstart.py --epochs 2 --num-workers 2
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

import torchseq as ts
from torchseq.tools.sample import sample_shards, sample_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()

    pipe = (
        ts.read_jsonl(sample_shards())
        .shuffle(buffer_size=2_000, seed=0)
        .tokenize(sample_tokenizer(), max_length=128)
        .bucket(batch_size=64)
        .collate(pad_to_multiple_of=8)
    )
    loader = DataLoader(pipe, batch_size=None, num_workers=args.num_workers)
    for epoch in range(args.epochs):
        pipe.set_epoch(epoch)
        pairs = 0
        for batch in loader:
            anchor, positive = batch["anchor"], batch["positive"]
            assert anchor["input_ids"].shape == anchor["attention_mask"].shape
            pairs += positive["input_ids"].shape[0]
        print(f"epoch {epoch}: {pairs} pairs")


if __name__ == "__main__":
    main()

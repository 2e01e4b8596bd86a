"""Contrastive training with Lightning: torchseq.lightning.PairDataModule.

The DataModule sets the pipeline's epoch every epoch, returns a
StatefulDataLoader whose position is part of every checkpoint, and logs data
statistics (pairs/s, padding efficiency, negatives per anchor, per-source
shares of a mixture, duplicate deferrals). Here the training data is a
mixture of two sources drawn as whole batches (``level="batch"``); a fixed
tenth of the pairs is held out for validation.

    python examples/lightning_contrastive.py --max-steps 200
    python examples/lightning_contrastive.py --max-steps 400 --ckpt-path runs/lightning/checkpoints/last.ckpt
    torchrun --nproc_per_node=2 examples/lightning_contrastive.py --devices 2 --strategy ddp
"""

from __future__ import annotations

import argparse
import json
import zlib
from typing import Any

import lightning.pytorch as pl
import torch
from contrastive import embed_columns, info_nce, tiny_bert

import torchseq as ts
from torchseq.lightning import PairDataModule
from torchseq.tools.sample import sample_shards, sample_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--val-every", type=int, default=100, help="validate every this many steps")
    parser.add_argument("--out", default="runs/lightning", help="logs and checkpoints")
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args()


def held_out(record: dict[str, Any]) -> bool:
    """A fixed tenth of the pairs, for validation."""
    return zlib.crc32(record["anchor"].encode()) % 10 == 0


def for_training(record: dict[str, Any]) -> bool:
    return not held_out(record)


def swap(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "anchor": record["positive"], "positive": record["anchor"]}


def pipelines(args: argparse.Namespace) -> tuple[ts.Pipeline, ts.Pipeline]:
    shards = sample_shards()

    def source(spec: list[str], seed: int, reverse: bool = False) -> ts.Pipeline:
        pipe = ts.read_jsonl(spec).shuffle(buffer_size=1_000, seed=seed).filter(for_training)
        if reverse:
            pipe = pipe.map(swap)
        return pipe.tokenize(sample_tokenizer(), max_length=args.max_length).bucket(args.batch_size, unique=True)

    # Two sources standing in for two datasets: description -> long text, and the reverse.
    train = ts.mix({"desc": source(shards[:2], 0), "reverse": source(shards[2:], 1, reverse=True)},
                   weights=[2, 1], level="batch", stop="never", seed=0).collate(pad_to_multiple_of=8)
    val = (ts.read_jsonl(shards).filter(held_out).tokenize(sample_tokenizer(), max_length=args.max_length)
           .batch(args.batch_size).collate(pad_to_multiple_of=8))
    return train, val


class Contrastive(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.model = tiny_bert()
        self.lr = lr

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        anchors, positives = embed_columns(self.model, batch["anchor"], batch["positive"])
        return info_nce(anchors, positives, torch.arange(len(anchors)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["anchor"]["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=len(batch["anchor"]["input_ids"]), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class LossHistory(pl.Callback):
    """Keeps every step's training loss, for the summary line."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    train, val = pipelines(args)
    datamodule = PairDataModule(train, val, num_workers=args.num_workers, val_num_workers=0,
                                log_every_n_steps=args.log_every)
    history = LossHistory()
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy=args.strategy, max_steps=args.max_steps,
        # The mixture cycles (stop="never"): epochs do not end, so validate by steps.
        limit_val_batches=4, val_check_interval=args.val_every, check_val_every_n_epoch=None,
        log_every_n_steps=args.log_every, default_root_dir=args.out,
        logger=pl.loggers.CSVLogger(args.out, name="logs"),
        callbacks=[history, pl.callbacks.ModelCheckpoint(dirpath=f"{args.out}/checkpoints", save_last=True,
                                                         every_n_train_steps=args.log_every)],
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Contrastive(args.lr), datamodule=datamodule, ckpt_path=args.ckpt_path)
    if trainer.global_rank == 0:
        losses = history.losses
        head = max(1, len(losses) // 10)
        first, last = sum(losses[:head]) / head, sum(losses[-head:]) / head
        stats = datamodule.stats()
        shares = {k: round(v, 3) for k, v in stats.items() if k.startswith(("data/source/", "data/target/"))}
        print(f"loss fell from {first:.3f} to {last:.3f} over {len(losses)} steps; sources {shares}")
        val_loss = trainer.callback_metrics.get("val/loss")
        print("RESULT " + json.dumps({"steps": trainer.global_step, "first_loss": first, "last_loss": last,
                                      "val_loss": None if val_loss is None else float(val_loss), **stats}))


if __name__ == "__main__":
    main()

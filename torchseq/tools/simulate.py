"""What batching would make of a corpus' lengths: the padding simulation of ``torchseq inspect``.

The real batching stages run on stand-in records that carry only token
lengths, so the numbers are those the pipeline would reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchseq.batching import Batch, BucketBatch, TokenBudgetBatch
from torchseq.batching.lengths import padded_tokens, real_tokens
from torchseq.context import Context
from torchseq.records import Record


@dataclass
class PaddingResult:
    """What one batching strategy makes of the corpus' lengths."""

    strategy: str
    batches: int
    mean_batch_size: float
    efficiency: float  # real tokens / padded tokens, all text columns


def simulate(strategy: str, stage: Any, stand_ins: list[Record]) -> PaddingResult:
    """Run one batching stage over ``stand_ins`` and measure its padding."""
    batches = list(stage.open(iter(stand_ins), Context(), {}).iterator)
    real = sum(real_tokens(b) for b in batches)
    padded = sum(padded_tokens(b) for b in batches)
    mean = sum(len(b) for b in batches) / len(batches) if batches else 0.0
    return PaddingResult(strategy, len(batches), mean, real / padded if padded else 0.0)


def simulate_padding(stand_ins: list[Record], batch_size: int, max_tokens: int) -> list[PaddingResult]:
    """``batch``, ``bucket`` and ``batch_by_tokens`` at the given sizes."""
    return [
        simulate(f"batch({batch_size})", Batch(batch_size), stand_ins),
        simulate(f"bucket({batch_size})", BucketBatch(batch_size), stand_ins),
        simulate(f"batch_by_tokens({max_tokens})", TokenBudgetBatch(max_tokens), stand_ins),
    ]

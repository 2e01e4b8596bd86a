"""Training-facing statistics: what the loop sees, and what the stages counted.

Two views, both cheap enough for every step:

* :class:`BatchMeter` measures the collated batches a training loop consumes,
  in the main process: pairs and pairs/s, padding efficiency, in-batch
  negatives per anchor, and per-source shares against target weights (from
  the ``"dataset"`` field that :func:`torchseq.mix` writes).
* :func:`~torchseq.pipeline.checkpoint.pipeline_counters` sums the counters
  the stages reported (duplicate deferrals of ``unique=``, per-source
  deliveries of ``mix``, draws of ``sample_pairs``) over every worker, from a
  pipeline's or a ``StatefulDataLoader``'s ``state_dict()``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from torchseq.pipeline.checkpoint import pipeline_counters

__all__ = ["BatchMeter", "deferral_rate", "pipeline_counters"]

COLUMNS = ("anchor", "positive", "negatives")


def deferral_rate(counters: Mapping[str, int | float]) -> float:
    """Share of records that ``unique=`` held back at least once."""
    records = counters.get("unique.records", 0)
    return counters.get("unique.deferrals", 0) / records if records else 0.0


class BatchMeter:
    """Measures the collated batches a training loop consumes.

    Call :meth:`update` with every batch (before moving it to the device is
    fine); :meth:`summary` gives flat, loggable numbers.

    Args:
        targets: target share per source (``mix(...).source.probabilities``);
            the summary reports each source's observed share next to it.
        world_size: ranks whose batches are gathered for the loss; in-batch
            negatives per anchor grow with it.
    """

    def __init__(self, targets: Mapping[str, float] | None = None, world_size: int = 1) -> None:
        self.targets = dict(targets or {})
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.pairs = 0
        self.real_tokens = 0
        self.padded_tokens = 0
        self.candidates = 0
        self.sources: Counter[str] = Counter()
        self.started: float | None = None
        self.last: float | None = None

    def update(self, batch: Mapping[str, Any]) -> None:
        now = time.perf_counter()
        if self.started is None:
            # Time from the first batch on: start-up (worker launch) is not throughput.
            self.started = now
        self.last = now
        size = int(batch["anchor"]["input_ids"].shape[0])
        self.batches += 1
        self.pairs += size
        per_anchor = 1
        for name in COLUMNS:
            column = batch.get(name)
            if column is None:
                continue
            mask = column["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.padded_tokens += mask.numel()
            if name == "negatives":
                per_anchor += int(mask.shape[1])
        # Each anchor is scored against every positive and hard negative of the
        # (gathered) batch; all but its own positive are negatives.
        self.candidates += size * (size * self.world_size * per_anchor - 1)
        sources = batch.get("dataset")
        if sources is not None:
            self.sources.update(str(s) for s in sources)

    def summary(self) -> dict[str, float]:
        """Flat numbers: ``pairs``, ``pairs_per_s``, ``padding_efficiency``, ``negatives_per_anchor``,
        ``source/<name>`` (observed share) and ``target/<name>``."""
        out: dict[str, float] = {"batches": float(self.batches), "pairs": float(self.pairs)}
        if self.started is not None and self.last is not None and self.batches > 1:
            # Pairs after the first batch over the time since the first batch.
            first = self.pairs / self.batches
            out["pairs_per_s"] = (self.pairs - first) / max(self.last - self.started, 1e-9)
        if self.padded_tokens:
            out["padding_efficiency"] = self.real_tokens / self.padded_tokens
        if self.pairs:
            out["negatives_per_anchor"] = self.candidates / self.pairs
        total = sum(self.sources.values())
        for name in sorted(set(self.sources) | set(self.targets)):
            if total:
                out[f"source/{name}"] = self.sources[name] / total
            if name in self.targets:
                out[f"target/{name}"] = self.targets[name]
        return out

"""Training-facing statistics: BatchMeter numbers and stage counters summed over workers."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from tests.conftest import write_jsonl
from torchseq.batching.collate import pad_sequences
from torchseq.meter import deferral_rate


def column(lengths: list[int]) -> dict[str, torch.Tensor]:
    return pad_sequences([[5] * n for n in lengths], pad_id=0)


def test_batch_meter_numbers() -> None:
    meter = ts.BatchMeter(targets={"a": 0.75, "b": 0.25}, world_size=2)
    negatives = column([3, 1, 2, 2])
    batch: dict[str, Any] = {
        "anchor": column([2, 4]),  # 6 real of 8
        "positive": column([3, 3]),  # 6 of 6
        "negatives": {k: v.view(2, 2, -1) for k, v in negatives.items()},  # 8 of 12
        "dataset": ["a", "a"],
    }
    meter.update(batch)
    meter.update({"anchor": column([1]), "positive": column([1]), "dataset": ["b"]})
    summary = meter.summary()
    assert summary["pairs"] == 3 and summary["batches"] == 2
    assert summary["padding_efficiency"] == pytest.approx((6 + 6 + 8 + 1 + 1) / (8 + 6 + 12 + 1 + 1))
    # batch 1: 2 anchors x (2 rows x 2 ranks x (1 positive + 2 negatives) - 1) = 2 x 11;
    # batch 2: 1 anchor x (1 x 2 x 1 - 1) = 1.
    assert summary["negatives_per_anchor"] == pytest.approx((2 * 11 + 1) / 3)
    assert summary["source/a"] == pytest.approx(2 / 3) and summary["target/a"] == 0.75
    assert summary["source/b"] == pytest.approx(1 / 3) and summary["target/b"] == 0.25
    assert summary["pairs_per_s"] > 0


def test_counters_summed_over_workers(tmp_path: Path) -> None:
    rows = [{"anchor": f"q{i}", "positive": f"shared answer {i % 7}"} for i in range(120)]
    spec = [write_jsonl(tmp_path / f"s{k}.jsonl", rows[k::4]) for k in range(4)]
    children = {"x": ts.read_jsonl(spec[:2]), "y": ts.read_jsonl(spec[2:])}
    pipe = ts.mix(children, stop="all_exhausted").batch(8, unique=True)
    loader = StatefulDataLoader(pipe, batch_size=None, num_workers=2)
    batches = list(loader)
    counters = ts.pipeline_counters(loader.state_dict())
    assert counters["mix.x.records"] + counters["mix.y.records"] == 120
    assert counters["unique.records"] == 120 == sum(len(b) for b in batches)
    assert counters["unique.deferrals"] > 0
    assert 0 < deferral_rate(counters) < 1


def test_counters_mid_epoch_without_workers(make_shards: Any) -> None:
    pipe = ts.read_jsonl(make_shards([50])).sample_pairs(swap=True).batch(5, unique=True)
    iterator = iter(pipe)
    for _ in itertools.islice(iterator, 3):
        pass
    counters = ts.pipeline_counters(pipe.state_dict())
    assert counters["unique.records"] == 15
    assert counters["sample_pairs.records"] == 15
    assert 0 < counters["sample_pairs.swapped"] < 15

"""Padding efficiency of bucket() and batch_by_tokens(), and the pool ordering behind it.

Thresholds: the bundled sample is 4,000 real pairs of the dev corpus, about one
default pool (bucket: 64 batches of 64 = 4,096 records; batch_by_tokens:
max(4096, max_tokens) records), so it behaves like one pool of a dev-corpus
run. There bucket(64) measures 0.920 and batch_by_tokens(4096) 0.914 real /
padded tokens (fixed batches of 64: 0.517); the tests hold them to the
issue's 0.90 target. The whole dev corpus is measured in benchmarks/padding.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import torchseq as ts
from torchseq.batching import BucketBatch, TokenBudgetBatch
from torchseq.batching.lengths import padded_tokens, real_tokens


def efficiency(batches: list[list[dict[str, Any]]]) -> float:
    return sum(map(real_tokens, batches)) / sum(map(padded_tokens, batches))


@pytest.fixture(scope="module")
def tokenized(sample_files: list[str], tokenizer_file: str) -> ts.Pipeline:
    return ts.read_jsonl(sample_files).tokenize(tokenizer_file, max_length=128)


def rows(batches: list[list[dict[str, Any]]]) -> Counter[tuple[str, str]]:
    return Counter((r["anchor"], r["positive"]) for b in batches for r in b)


def test_fixed_batches_waste_half(tokenized: ts.Pipeline) -> None:
    assert efficiency(list(tokenized.batch(64))) < 0.55


def test_bucket_reaches_090_on_the_sample(tokenized: ts.Pipeline) -> None:
    batches = list(tokenized.bucket(64))
    assert efficiency(batches) >= 0.90
    assert sorted(map(len, batches)) == [4000 % 64] + [64] * (4000 // 64)
    assert rows(batches) == rows([list(tokenized)])


def test_batch_by_tokens_reaches_090_on_the_sample(tokenized: ts.Pipeline) -> None:
    batches = list(tokenized.batch_by_tokens(4096))
    assert efficiency(batches) >= 0.90
    assert all(padded_tokens(b) <= 4096 or len(b) == 1 for b in batches)
    assert rows(batches) == rows([list(tokenized)])
    # Mean batch size stays near what the budget allows (~48 pairs at ~85 padded tokens each).
    assert 40 <= 4000 / len(batches) <= 64


def test_token_budget_pool_scales_with_the_budget() -> None:
    assert TokenBudgetBatch(1024).pool_limit == 4096
    assert TokenBudgetBatch(16_384).pool_limit == 16_384
    assert TokenBudgetBatch(16_384, pool_size=100).pool_limit == 100


def _records(lengths: list[tuple[int, int]]) -> list[dict[str, Any]]:
    return [
        {"i": i, "tokens": {"anchor": [1] * a, "positive": [1] * p}} for i, (a, p) in enumerate(lengths)
    ]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 300)), max_size=300),
    stage=st.sampled_from([BucketBatch(8), BucketBatch(5, drop_last=False), TokenBudgetBatch(600)]),
)
def test_pool_order_is_a_permutation(lengths: list[tuple[int, int]], stage: Any) -> None:
    records = _records(lengths)
    assert sorted(stage.ranking(records)) == list(range(len(records)))


def test_windows_sort_the_short_column_among_similar_long_ones() -> None:
    # Long sides nearly equal, short sides spread: the windows must group the
    # short sides, which a sort by the long column alone would leave random.
    lengths = [(1 + (i * 7) % 30, 100 + i % 3) for i in range(256)]
    stage = BucketBatch(32, pool_batches=8)
    records = _records(lengths)
    batches = stage.cut([records[i] for i in stage.ranking(records)], True)
    by_long_only = BucketBatch(32).cut(
        sorted(_records(lengths), key=lambda r: len(r["tokens"]["positive"])), True
    )
    assert efficiency(batches) > efficiency(by_long_only) + 0.05

"""batch / bucket / batch_by_tokens: grouping invariants."""

from __future__ import annotations

from collections import Counter

import pytest

import torchseq as ts
from torchseq.batching.lengths import padded_tokens, real_tokens


def pipeline(sample_files: list[str], tokenizer_file: str) -> ts.Pipeline:
    return ts.read_jsonl(sample_files[:2]).tokenize(tokenizer_file, max_length=128)


def keys(batches: list[list[dict[str, object]]]) -> Counter[tuple[object, object]]:
    return Counter((r["anchor"], r["positive"]) for b in batches for r in b)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sizes(sample_files: list[str], tokenizer_file: str, drop_last: bool) -> None:
    batches = list(pipeline(sample_files, tokenizer_file).batch(64, drop_last=drop_last))
    sizes = [len(b) for b in batches]
    assert all(s == 64 for s in sizes[:-1])
    assert sizes[-1] == (64 if drop_last else 2000 - 64 * 31)
    assert sum(sizes) == (64 * 31 if drop_last else 2000)


def test_bucket_keeps_every_record_and_cuts_padding(sample_files: list[str], tokenizer_file: str) -> None:
    base = pipeline(sample_files, tokenizer_file)
    fixed = list(base.batch(64))
    bucketed = list(base.bucket(64, pool_batches=16))
    assert keys(bucketed) == keys(fixed)
    assert all(len(b) <= 64 for b in bucketed)

    def efficiency(batches: list[list[dict[str, object]]]) -> float:
        return sum(real_tokens(b) for b in batches) / sum(padded_tokens(b) for b in batches)

    assert efficiency(bucketed) > efficiency(fixed) + 0.1


def test_token_budget_respected(sample_files: list[str], tokenizer_file: str) -> None:
    base = pipeline(sample_files, tokenizer_file)
    batches = list(base.batch_by_tokens(max_tokens=4096))
    assert keys(batches) == keys(list(base.batch(64)))
    assert all(padded_tokens(b) <= 4096 for b in batches)
    assert len({len(b) for b in batches}) > 1  # sizes adapt to lengths


def test_bucket_needs_tokens(sample_files: list[str]) -> None:
    with pytest.raises(ts.ConfigError, match="tokenize"):
        list(ts.read_jsonl(sample_files[:1]).bucket(8))

"""Padding, masks and the batch layout."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchseq as ts
from torchseq.batching.collate import collate_records, pad_sequences

seqs = st.lists(st.lists(st.integers(1, 30000), min_size=1, max_size=40), min_size=1, max_size=16)


@settings(max_examples=200, deadline=None)
@given(sequences=seqs, multiple=st.sampled_from([None, 1, 8, 16]), pad_id=st.integers(0, 5))
def test_pad_sequences_invariants(sequences: list[list[int]], multiple: int | None, pad_id: int) -> None:
    out = pad_sequences(sequences, pad_id, multiple)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == mask.shape
    width = max(len(s) for s in sequences)
    assert ids.shape[1] >= width and (multiple is None or ids.shape[1] % multiple == 0)
    assert ids.shape[1] - width < (multiple or 1)
    for row, seq in enumerate(sequences):
        assert ids[row, : len(seq)].tolist() == seq
        assert mask[row].tolist() == [1] * len(seq) + [0] * (ids.shape[1] - len(seq))
        assert (ids[row, len(seq):] == pad_id).all()


def rec(
    anchor: Any, positive: Any, negatives: list[list[int]] | None = None, **extra: Any
) -> dict[str, Any]:
    tokens: dict[str, Any] = {"anchor": anchor, "positive": positive}
    if negatives is not None:
        tokens["negatives"] = negatives
    return {"tokens": tokens, **extra}


def test_columns_pad_independently_and_guid_passes_through() -> None:
    batch = collate_records([rec([2, 5, 3], [2, 9, 9, 9, 9, 3], guid="a"), rec([2, 3], [2, 7, 3], guid="b")], pad_id=0)
    assert batch["anchor"]["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["positive"]["input_ids"].shape == (2, 6)
    assert batch["positive"]["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert batch["guid"] == ["a", "b"]


def test_negatives_shape_is_batch_k_length() -> None:
    batch = collate_records([rec([1], [2], [[3, 4], [5]]), rec([1], [2], [[6], [7, 8, 9]])], pad_id=0)
    assert batch["negatives"]["input_ids"].shape == (2, 2, 3)
    assert batch["negatives"]["input_ids"][1, 1].tolist() == [7, 8, 9]
    assert batch["negatives"]["attention_mask"][0, 1].tolist() == [1, 0, 0]


def test_uneven_negative_counts_are_a_clear_error() -> None:
    with pytest.raises(ts.DataError, match="different numbers of negatives"):
        collate_records([rec([1], [2], [[3]]), rec([1], [2], [[3], [4]])])


def test_numpy_token_arrays_are_accepted() -> None:
    batch = collate_records([rec(np.array([2, 3], np.uint16), np.array([2, 4, 3], np.uint16))])
    assert batch["positive"]["input_ids"].tolist() == [[2, 4, 3]]


def test_pipeline_uses_the_tokenizer_pad_id(sample_files: list[str], tokenizer_file: str) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, pad_token="[MASK]")  # id 4: not the default
    batch = next(iter(ts.read_jsonl(sample_files[:1]).tokenize(hf, 32).batch(16).collate(pad_to_multiple_of=8)))
    ids, mask = batch["positive"]["input_ids"], batch["positive"]["attention_mask"]
    assert ids.shape[1] % 8 == 0
    assert (ids[mask == 0] == 4).all() and (mask == 0).any()


def test_collate_without_tokens_says_what_to_do(sample_files: list[str]) -> None:
    with pytest.raises(ts.ConfigError, match="tokenize"):
        next(iter(ts.read_jsonl(sample_files[:1]).batch(2).collate()))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.tensor([[2, 30521, 3], [2, 3, 0]]),
        torch.tensor([[-5, 2**40]]),
        torch.tensor([[70000, 1]], dtype=torch.int32),
        torch.ones(4, 3, dtype=torch.bool),
        torch.zeros(0, 7, dtype=torch.int64),
        torch.arange(24).view(2, 3, 4).transpose(1, 2),
        torch.tensor([0.5, 1.5]),
    ],
)
def test_collated_batch_pickles_to_identical_tensors(tensor: torch.Tensor) -> None:
    from torchseq.batching.transport import CollatedBatch

    batch = CollatedBatch({"anchor": {"input_ids": tensor}, "guid": ["a", None]})
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is dict
    assert back["guid"] == ["a", None]
    got = back["anchor"]["input_ids"]
    assert got.dtype == tensor.dtype and got.shape == tensor.shape
    assert torch.equal(got, tensor)


def test_collated_batch_survives_default_convert_and_worker_queues(
    sample_files: list[str], tokenizer_file: str
) -> None:
    from torch.utils.data import DataLoader
    from torch.utils.data._utils.collate import default_convert

    from torchseq.batching.transport import CollatedBatch

    pipe = ts.read_jsonl(sample_files).tokenize(tokenizer_file, 48).batch(64).collate()
    direct = list(pipe)
    assert all(type(b) is CollatedBatch for b in direct)
    assert type(default_convert(direct[0])) is CollatedBatch
    through_workers = list(DataLoader(pipe, batch_size=None, num_workers=2))
    assert all(type(b) is dict for b in through_workers)
    # Two workers batch their own shards: compare the delivered rows.
    def rows(batches: list[dict[str, Any]]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        out = []
        for b in batches:
            assert b["anchor"]["input_ids"].dtype == torch.int64
            for column in ("anchor", "positive"):
                assert b[column]["attention_mask"].dtype == torch.int64
            for i in range(b["anchor"]["input_ids"].shape[0]):
                a, p = (tuple(b[c]["input_ids"][i][b[c]["attention_mask"][i].bool()].tolist())
                        for c in ("anchor", "positive"))
                out.append((a, p))
        return sorted(out)

    assert rows(direct) == rows(through_workers)


@settings(max_examples=100, deadline=None)
@given(sequences=seqs, multiple=st.sampled_from([None, 8]), dtype=st.sampled_from([np.uint16, np.int32]))
def test_pad_sequences_same_for_arrays_and_lists(
    sequences: list[list[int]], multiple: int | None, dtype: Any
) -> None:
    arrays = [np.asarray(s, dtype=dtype) for s in sequences]
    from_lists = pad_sequences(sequences, 0, multiple)
    from_arrays = pad_sequences(arrays, 0, multiple)
    for key in ("input_ids", "attention_mask"):
        assert from_arrays[key].dtype == torch.int64
        assert torch.equal(from_arrays[key], from_lists[key])

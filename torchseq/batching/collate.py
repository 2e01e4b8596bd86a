"""Padding a list of tokenized records into tensors.

Output of :class:`Collate`::

    {
        "anchor":    {"input_ids": LongTensor[B, L_a], "attention_mask": LongTensor[B, L_a]},
        "positive":  {"input_ids": LongTensor[B, L_p], "attention_mask": LongTensor[B, L_p]},
        # when the records have negatives (every record the same number K):
        "negatives": {"input_ids": LongTensor[B, K, L_n], "attention_mask": LongTensor[B, K, L_n]},
        # passed through when present: "guid", "dataset" as lists of length B
    }

Each column is padded to its own longest sequence in the batch (rounded up to
``pad_to_multiple_of``), with the tokenizer's pad id; masks are 1 on real tokens.
The dict is a :class:`~torchseq.batching.transport.CollatedBatch`, which crosses
DataLoader worker queues as compact bytes instead of shared-memory tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchseq.batching.transport import CollatedBatch
from torchseq.context import Context
from torchseq.errors import ConfigError, DataError
from torchseq.protocol import Counters, Running, expect_no_state
from torchseq.records import Record
from torchseq.state import State

PASSTHROUGH_FIELDS = ("guid", "dataset")


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad id sequences into ``input_ids`` / ``attention_mask`` LongTensors."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max()) if len(sequences) else 0
    if pad_to_multiple_of and width % pad_to_multiple_of:
        width += pad_to_multiple_of - width % pad_to_multiple_of
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    real = np.arange(width) < lengths[:, None]
    if sequences and all(type(s) is np.ndarray and s.ndim == 1 for s in sequences):
        # Pre-tokenized arrays: one concatenation and one masked store (row-major
        # order of the mask is the order of the concatenation).
        ids[real] = np.concatenate(sequences)
    else:
        for row, (seq, n) in enumerate(zip(sequences, lengths, strict=True)):
            ids[row, :n] = seq
    mask = real.astype(np.int64)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def collate_records(
    records: Sequence[Record], pad_id: int = 0, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Pad a batch of tokenized records (see module docs for the layout)."""
    if not records:
        raise DataError("collate: empty batch")
    first = records[0].get("tokens")
    if first is None:
        raise ConfigError("collate: records have no token ids; put .tokenize(...) before .collate()")
    # A dict that crosses DataLoader worker queues as compact bytes (torchseq.batching.transport).
    batch: dict[str, Any] = CollatedBatch()
    for name in first:
        if name == "negatives":
            continue
        try:
            column = [r["tokens"][name] for r in records]
        except KeyError:
            raise DataError(f"collate: some records in the batch have no {name!r} tokens") from None
        batch[name] = pad_sequences(column, pad_id, pad_to_multiple_of)
    with_negatives = sum(1 for r in records if "negatives" in r["tokens"])
    if with_negatives:
        counts = {len(r["tokens"]["negatives"]) for r in records if "negatives" in r["tokens"]}
        if with_negatives != len(records) or len(counts) != 1:
            raise DataError(
                "collate: records in one batch have different numbers of negatives "
                f"({sorted(counts)}{', some none' if with_negatives != len(records) else ''}); "
                "give every record the same number of negatives"
            )
        k = counts.pop()
        flat = [n for r in records for n in r["tokens"]["negatives"]]
        padded = pad_sequences(flat, pad_id, pad_to_multiple_of)
        batch["negatives"] = {key: t.view(len(records), k, -1) for key, t in padded.items()}
    for name in PASSTHROUGH_FIELDS:
        if name in records[0]:
            batch[name] = [r.get(name) for r in records]
    return batch


@dataclass(frozen=True)
class Collate:
    """Turn each batch (a list of tokenized records) into padded tensors. Stateless.

    The pipeline hands the pad id over: ``pad_id`` when the user gave one or
    the tokenizer is known, else ``pad_id_of``, called once per run in the
    worker (pre-tokenized shards record theirs beside the shards), else 0.

    Counters: ``real_tokens``, ``padded_tokens`` (padding efficiency in ``pipe.stats()``).
    """

    pad_to_multiple_of: int | None = None
    pad_id: int | None = None
    pad_id_of: Callable[[], int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ConfigError(f"collate: pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")

    def settings(self) -> dict[str, Any]:
        return {"pad_to_multiple_of": self.pad_to_multiple_of, "pad_id": self.pad_id}

    def resolved_pad_id(self) -> int:
        if self.pad_id is not None:
            return self.pad_id
        return self.pad_id_of() if self.pad_id_of is not None else 0

    def open(self, upstream: Iterator[list[Record]], ctx: Context, state: State) -> Running:
        expect_no_state("collate", state)
        return _Collating(upstream, self.resolved_pad_id(), self.pad_to_multiple_of)


class _Collating(Running):
    __slots__ = ("real_tokens", "padded_tokens")

    def __init__(self, upstream: Iterator[list[Record]], pad_id: int, multiple: int | None) -> None:
        self.real_tokens = 0
        self.padded_tokens = 0
        self.iterator = self._collate(upstream, pad_id, multiple)

    def counters(self) -> Counters:
        return {"real_tokens": self.real_tokens, "padded_tokens": self.padded_tokens}

    def _collate(self, upstream: Iterator[list[Record]], pad_id: int, multiple: int | None) -> Iterator[Any]:
        for records in upstream:
            if not isinstance(records, list):
                raise ConfigError("collate: expects batches; put .batch()/.bucket()/.batch_by_tokens() before it")
            batch = collate_records(records, pad_id, multiple)
            for column in batch.values():
                if isinstance(column, dict) and "attention_mask" in column:
                    mask = column["attention_mask"]
                    self.real_tokens += int(mask.sum())
                    self.padded_tokens += mask.numel()
            yield batch

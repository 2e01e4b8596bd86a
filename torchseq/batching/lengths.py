"""Token lengths of records and batches, and the rules that decide how many records a batch holds.

The batching stages of :mod:`torchseq.batching` rank and cut pools with
these; ``padded_tokens`` / ``real_tokens`` also measure padding efficiency
(benchmarks, ``torchseq inspect``).
"""

from __future__ import annotations

import math
import warnings

from torchseq.errors import BalanceWarning, ConfigError
from torchseq.records import Record


def column_lengths(record: Record) -> tuple[int, ...]:
    """Token lengths per padded column: each text field, negatives by their longest."""
    tokens = record.get("tokens")
    if tokens is None:
        raise ConfigError(
            "length-aware batching needs token ids: put .tokenize(...) before .bucket()/"
            ".batch_by_tokens(), or read pre-tokenized shards"
        )
    lengths = []
    for name, ids in tokens.items():
        if name == "negatives":
            lengths.append(max((len(n) for n in ids), default=0))
        else:
            lengths.append(len(ids))
    return tuple(lengths)


def padded_tokens(records: list[Record]) -> int:
    """Tokens in the padded tensors of a batch: per column, count x longest."""
    if not records:
        return 0
    total = 0
    for name in records[0]["tokens"]:
        if name == "negatives":
            width = max((len(n) for r in records for n in r["tokens"]["negatives"]), default=0)
            total += width * sum(len(r["tokens"]["negatives"]) for r in records)
        else:
            total += len(records) * max(len(r["tokens"][name]) for r in records)
    return total


def real_tokens(records: list[Record]) -> int:
    total = 0
    for r in records:
        for name, ids in r["tokens"].items():
            total += sum(len(n) for n in ids) if name == "negatives" else len(ids)
    return total


def fit_count(batches: list[list[Record]], count: int) -> list[list[Record]]:
    """Split length-sorted batches (largest padded size first) until there are ``count``.

    Halving keeps each part within the budget of the whole. Only when a record
    broke the ``max_record_tokens`` bound can there be too many batches; then
    the smallest neighbours are merged, past the budget, and a
    :class:`~torchseq.errors.BalanceWarning` says so.
    """
    costs = [padded_tokens(b) for b in batches]
    while len(batches) < count:
        i = max((j for j in range(len(batches)) if len(batches[j]) > 1), key=costs.__getitem__)
        half = len(batches[i]) // 2
        batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        costs[i : i + 1] = [padded_tokens(batches[i]), padded_tokens(batches[i + 1])]
    if len(batches) > count:
        warnings.warn(
            f"batch_by_tokens: a pool needed {len(batches)} batches where {count} were planned "
            "(a record exceeded max_record_tokens); merged some past max_tokens to keep "
            "ranks in step; raise max_record_tokens",
            BalanceWarning,
            stacklevel=2,
        )
        while len(batches) > count:
            j = min(range(len(batches) - 1), key=lambda k: len(batches[k]) + len(batches[k + 1]))
            batches[j : j + 2] = [batches[j] + batches[j + 1]]
    return batches


def dominant_first(lengths: list[tuple[int, ...]]) -> list[int]:
    """Column indices by tokens held in the pool, most first."""
    totals = [sum(column) for column in zip(*lengths, strict=True)]
    return sorted(range(len(totals)), key=totals.__getitem__, reverse=True)


def length_class(length: int) -> int:
    """Eight classes per doubling of length (exact below 16)."""
    if length < 16:
        return length
    return 16 + int(math.log2(length / 16) * 8)


def cost_columns(record: Record) -> tuple[int, ...]:
    """Per-record padded widths, with negatives counted once per negative."""
    out = []
    for name, ids in record["tokens"].items():
        if name == "negatives":
            out.append(len(ids) * max((len(n) for n in ids), default=0))
        else:
            out.append(len(ids))
    return tuple(out)


# ---------------------------------------------------------------- batch-size rules
class FixedSize:
    """At most ``size`` records per batch."""

    __slots__ = ("size", "count")

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0

    def fits(self, record: Record) -> bool:
        return self.count < self.size

    def add(self, record: Record) -> None:
        self.count += 1

    def full(self) -> bool:
        return self.count >= self.size

    def reset(self) -> None:
        self.count = 0


class TokenBudget:
    """The ``batch_by_tokens`` rule: a record joins while the padded cost stays within ``max_tokens``.

    Cost is (records + 1) x the sum of per-column widths (negatives counted
    once per negative); a record that alone exceeds the budget forms its own
    batch; ``max_batch_size`` caps the count.
    """

    __slots__ = ("max_tokens", "max_batch_size", "count", "widths")

    def __init__(self, max_tokens: int, max_batch_size: int | None) -> None:
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.count = 0
        self.widths: tuple[int, ...] = ()

    def fits(self, record: Record) -> bool:
        if not self.count:
            return True
        if self.max_batch_size is not None and self.count >= self.max_batch_size:
            return False
        widths = [max(a, b) for a, b in zip(self.widths, cost_columns(record), strict=True)]
        return (self.count + 1) * sum(widths) <= self.max_tokens

    def add(self, record: Record) -> None:
        lengths = cost_columns(record)
        if self.count:
            lengths = tuple(max(a, b) for a, b in zip(self.widths, lengths, strict=True))
        self.widths = lengths
        self.count += 1

    def full(self) -> bool:
        return self.max_batch_size is not None and self.count >= self.max_batch_size

    def reset(self) -> None:
        self.count = 0
        self.widths = ()

"""Grouping records into batches (fixed, pooled by length, token budget, duplicate-free) and collating them."""

from torchseq.batching.collate import Collate, collate_records, pad_sequences
from torchseq.batching.fixed import Batch
from torchseq.batching.pooled import BucketBatch, TokenBudgetBatch
from torchseq.batching.transport import CollatedBatch
from torchseq.batching.unique import Unique, as_unique

__all__ = [
    "Batch",
    "BucketBatch",
    "Collate",
    "CollatedBatch",
    "TokenBudgetBatch",
    "Unique",
    "as_unique",
    "collate_records",
    "pad_sequences",
]

"""Reading checks the record-count index: a shard that holds another number of records than planned.

A balanced epoch is planned from the index's counts, alike in every process,
so reading cannot change it. A shard longer than its count keeps its extra
records out of this epoch; a shorter one leaves its readers short (under DDP
the step guard evens the batches out). Either way an
:class:`~torchseq.errors.IndexWarning` names the shard and both counts, the
``index`` counters (``undelivered``, ``missing``) count the records, and the
index is corrected for the next epoch (:func:`~torchseq.sources.index_store.correct`).
"""

from __future__ import annotations

import warnings
from typing import Any

from torchseq.errors import IndexWarning
from torchseq.plan import WorkerPlan
from torchseq.protocol import Counters
from torchseq.sources.index_store import correct


class IndexCheck:
    """The checks of one reading run (a worker's plan).

    ``fault`` is the exception that ends a shard early (``ShardFault``; passed
    in because this module sits below the reading loop).
    """

    __slots__ = ("source", "counts", "epoch", "fault", "undelivered", "missing")

    def __init__(self, source: Any, plan: WorkerPlan, fault: type[Exception]) -> None:
        self.source, self.counts, self.epoch, self.fault = source, plan.counts, plan.epoch, fault
        self.undelivered = 0  # items past their shard's planned count
        self.missing = 0  # planned items their shard did not hold

    def counters(self) -> Counters:
        return {"index": {"undelivered": self.undelivered, "missing": self.missing}} if (
            self.undelivered or self.missing) else {}

    def past(self, shard: int, path: str, end: int) -> None:
        """A range of ``path`` ended at ``end`` with items left: if ``end`` is the shard's count, it was wrong."""
        if not self.counts or end != self.counts[shard]:
            return  # a share that ends inside the shard, or an unbalanced plan
        extra = 0
        actual: int | None = None  # unreadable further on: the next epoch counts it again
        try:
            for _ in self.source.items(path, end):
                extra += 1
            actual = end + extra
        except self.fault:
            extra = max(extra, 1)
        if extra == 0:
            return
        self.undelivered += extra
        holds = f"{actual}" if actual is not None else f"more than {end}"
        lost = f"{extra} record(s)" if actual is not None else f"at least {extra} record(s) (the rest is unreadable)"
        warnings.warn(
            f"{path}: the shard holds {holds} records, its record-count index says {end}: {lost} after "
            f"the first {end} were not delivered this epoch (its plan was made from the count); the count "
            "is corrected for the next epoch. Rewrite shards under a new name, or run "
            "`torchseq index --rebuild SPEC` after changing them in place",
            IndexWarning, stacklevel=3,
        )
        correct(self.source.options, type(self.source).__name__, path, self.epoch, end, actual)

    def short(self, shard: int, path: str, start: int, end: int | None, ordinal: int) -> None:
        """``path`` ended after ``ordinal`` items: before ``end``, the shard held fewer than its count."""
        if not self.counts or end is None or ordinal >= end:
            return
        planned, missing = self.counts[shard], end - max(start, ordinal)
        self.missing += missing
        warnings.warn(
            f"{path}: the shard holds {ordinal} records, its record-count index says {planned}: "
            f"{missing} record(s) planned for this worker were not there (under DDP the step guard "
            "evens out the batches); the count is corrected for the next epoch",
            IndexWarning, stacklevel=3,
        )
        correct(self.source.options, type(self.source).__name__, path, self.epoch, planned, ordinal)

"""A stage of your own: drop short positives, count them, resume exactly.

    python examples/custom_stage.py      # from the repository root
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torchseq as ts
from torchseq.context import Context
from torchseq.protocol import Counters, Running
from torchseq.state import State


@dataclass(frozen=True)
class DropShort:
    """Drop pairs whose positive has fewer than ``min_words`` words. Counts what it drops."""

    min_words: int = 3

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Running:
        return _DroppingShort(self.min_words, upstream, state)


class _DroppingShort(Running):
    __slots__ = ("dropped",)

    def __init__(self, min_words: int, upstream: Iterator[Any], state: State) -> None:
        self.dropped = int(state.get("dropped", 0))  # resume from a checkpoint
        self.iterator = self._run(min_words, upstream)

    def state_dict(self) -> State:
        return {"dropped": self.dropped}

    def counters(self) -> Counters:
        return {"drop_short.dropped": self.dropped}

    def _run(self, min_words: int, upstream: Iterator[Any]) -> Iterator[Any]:
        for record in upstream:
            if len(record["positive"].split()) < min_words:
                self.dropped += 1  # state first, then (maybe) yield
                continue
            yield record


if __name__ == "__main__":
    pipe = ts.read_jsonl("torchseq/data/sample-00000.jsonl.gz").then(DropShort(12))
    kept = sum(1 for _ in pipe)
    print(f"kept {kept}, stats: {pipe.stats().counters}")
    print(pipe.state_dict()["stages"][1])

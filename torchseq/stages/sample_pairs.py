"""Per-epoch draws from rich records: paraphrase sets, several positives, many negatives.

Records read from ``{"set": [...]}`` keep the whole set under ``"set"``;
records from ``{"query", "pos", "neg"}`` keep their candidates under
``"positives"`` / ``"negatives"`` (see :mod:`torchseq.records`). Training on
the first pair of every set, or on all hundred mined negatives, is what people
do for lack of a better tool; the usual recipe draws afresh every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import ConfigError, DataError
from torchseq.protocol import Counters, Running
from torchseq.records import Record
from torchseq.rng import derive_seed
from torchseq.state import Saved, State

_MASK = (1 << 64) - 1
COUNTERS = ("records", "sets", "positives", "short_negatives", "swapped")


class _Draws:
    """splitmix64: a few well-mixed draws from one 64-bit seed.

    Seeding ``random.Random`` costs about 10 us, several times the whole draw;
    a record needs at most a handful of numbers.
    """

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)`` (bias at most n / 2**64)."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) * n) >> 64

    def sample(self, items: list[Any], k: int) -> list[Any]:
        """``k`` distinct items in random order (partial Fisher-Yates)."""
        pool = list(items)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def record_identity(record: Record) -> Any:
    """What makes a record the same record in every epoch and every worker."""
    guid = record.get("guid")
    if guid is not None:
        return ("guid", guid)
    return (record.get("anchor"), record.get("positive"))


@dataclass(frozen=True)
class SamplePairs:
    """Draw a fresh pair, and ``num_negatives`` negatives, from each record every epoch.

    * ``"set"`` records: two distinct texts of the set, in random order;
    * ``"positives"`` records: one of the positives (anchor stays);
    * ``num_negatives``: ``None`` keeps the negatives as they are, ``0``
      removes them, ``k`` draws ``k`` distinct ones (with repeats, counted as
      ``short_negatives``, when a record has fewer; a record with none is an error);
    * ``swap``: anchor and positive swapped with probability 1/2 (symmetric data).

    The candidate lists (``set``, ``positives``) are not passed on. Draws are
    a pure function of ``(seed, epoch, record identity)`` -- its ``guid``, else
    its first pair -- so they do not depend on workers, ranks or order, and a
    resumed run draws what the uninterrupted run drew.

    State: ``counters`` only (the draws themselves need none).
    """

    num_negatives: int | None = None
    swap: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_negatives is not None and self.num_negatives < 0:
            raise ConfigError(f"sample_pairs: num_negatives must be >= 0 or None, got {self.num_negatives}")

    def settings(self) -> dict[str, Any]:
        return {"num_negatives": self.num_negatives, "swap": self.swap, "seed": self.seed}

    def open(self, upstream: Iterator[Record], ctx: Context, state: State) -> Running:
        return _Drawing(self, upstream, ctx.epoch, state)

    def draw(self, record: Record, epoch: int, counters: dict[str, int] | None = None) -> Record:
        """The record as drawn for ``epoch``."""
        counts = counters if counters is not None else dict.fromkeys(COUNTERS, 0)
        draws = _Draws(derive_seed("sample_pairs", self.seed, epoch, record_identity(record)))
        out = {k: v for k, v in record.items() if k not in ("set", "positives")}
        texts = record.get("set")
        if texts is not None and len(texts) >= 2:
            out["anchor"], out["positive"] = draws.sample(texts, 2)
            counts["sets"] += 1
        else:
            positives = record.get("positives")
            if positives:
                out["positive"] = positives[draws.below(len(positives))]
                counts["positives"] += 1
        k = self.num_negatives
        negatives = record.get("negatives")
        if k == 0:
            out.pop("negatives", None)
        elif k is not None:
            if not negatives:
                raise DataError(
                    f"sample_pairs: record {str(out.get('anchor'))[:60]!r} has no negatives to draw "
                    f"num_negatives={k} from; filter such records out or use num_negatives=None"
                )
            if len(negatives) >= k:
                out["negatives"] = draws.sample(negatives, k)
            else:
                out["negatives"] = [negatives[draws.below(len(negatives))] for _ in range(k)]
                counts["short_negatives"] += 1
        if self.swap and draws.below(2):
            out["anchor"], out["positive"] = out["positive"], out["anchor"]
            counts["swapped"] += 1
        return out


class _Drawing(Running):
    __slots__ = ("counts",)

    def __init__(self, stage: SamplePairs, upstream: Iterator[Record], epoch: int, state: State) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        if state:
            saved = Saved(state).counts("counters", [f"sample_pairs.{name}" for name in COUNTERS])
            for name, value in saved.items():
                self.counts[name.removeprefix("sample_pairs.")] = value
        self.iterator = self._draw_all(stage, upstream, epoch)

    def counters(self) -> Counters:
        return {f"sample_pairs.{k}": v for k, v in self.counts.items()}

    def state_dict(self) -> State:
        return {"counters": self.counters()}

    def _draw_all(self, stage: SamplePairs, upstream: Iterator[Record], epoch: int) -> Iterator[Record]:
        counts = self.counts
        draw = stage.draw
        for record in upstream:
            if not isinstance(record, dict) or "tokens" in record:
                raise ConfigError("sample_pairs: expects untokenized records; put it before tokenize and batching")
            out = draw(record, epoch, counts)
            counts["records"] += 1
            yield out

"""Duplicate-free batches for in-batch negatives.

With in-batch negatives every other record of a batch supplies negatives. A
text that occurs twice in one batch (the same answer to two questions, a
paraphrase set sampled twice, a hard negative that is another record's
positive) becomes a *false* negative: the loss pushes a text away from itself.
``unique=True`` on ``Pipeline.batch``, ``Pipeline.bucket``
and ``Pipeline.batch_by_tokens`` keeps every batch free of
repeated texts across anchor, positive and every negative (normalised by
``strip().lower()`` unless a ``key`` is given; optionally also ``guid``).

A record that would repeat a text of the batch being filled is *deferred*: it
waits in a bounded FIFO and goes into the next batch where it fits, oldest
first, in the same epoch. Only when it cannot be placed without a duplicate --
the deferral buffer overflows (a text far more frequent than one in a batch),
or the epoch ends -- does the ``leftover`` rule apply:

* ``"smaller"`` (default): deliver it in a smaller duplicate-free batch;
* ``"duplicates"``: deliver it in a full batch, accepting the duplicate;
* ``"drop"``: do not deliver it, count it.

Every record is delivered exactly once under ``"smaller"`` and
``"duplicates"``; under ``"drop"`` the undelivered ones are counted. Counters
(``unique.records``, ``unique.deferrals``, ``unique.forced``,
``unique.dropped``, ``unique.smaller``) are the stage's counters (see
:mod:`torchseq.protocol`) and travel in its state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torchseq.errors import ConfigError
from torchseq.records import Record
from torchseq.state import Saved, SnapshotEncoder, State

Leftover = Literal["smaller", "duplicates", "drop"]
LEFTOVER_CHOICES = ("smaller", "duplicates", "drop")
COUNTERS = ("records", "deferrals", "forced", "dropped", "smaller")
# How often a record met the packer before: a new record, one taken back from
# a partial batch, one taken back after a deferral (counted once, not again).
NEW, SEEN, DEFERRED = 0, 1, 2


def normalize_text(text: str) -> str:
    """The default text identity: surrounding space and case do not make a text different."""
    return text.strip().lower()


@dataclass(frozen=True)
class Unique:
    """Options of duplicate-free batching (``unique=True`` means ``Unique()``).

    Attributes:
        key: maps a text to its identity; default :func:`normalize_text`. Must
            be picklable (a module-level function) to reach spawned workers.
        guid: also keep records with the same ``guid`` apart.
        leftover: ``"smaller"``, ``"duplicates"`` or ``"drop"`` (module docs).
        max_deferred: records held back at most; bounds memory and state size.
    """

    key: Callable[[str], Hashable] = normalize_text
    guid: bool = False
    leftover: Leftover = "smaller"
    max_deferred: int = 1024

    def __post_init__(self) -> None:
        if self.leftover not in LEFTOVER_CHOICES:
            raise ConfigError(f"unique: leftover must be one of {LEFTOVER_CHOICES}, got {self.leftover!r}")
        if self.max_deferred < 1:
            raise ConfigError(f"unique: max_deferred must be >= 1, got {self.max_deferred}")
        if not callable(self.key):
            raise ConfigError(f"unique: key must be callable, got {type(self.key).__name__}")

    def settings(self) -> dict[str, Any]:
        """What shapes the batches (checked on resume); the key function by its name."""
        key = self.key if hasattr(self.key, "__qualname__") else type(self.key)
        return {"key": f"{getattr(key, '__module__', '?')}.{key.__qualname__}", "guid": self.guid,
                "leftover": self.leftover, "max_deferred": self.max_deferred}


def as_unique(value: bool | Unique | None) -> Unique | None:
    """``True`` -> default options, ``False``/``None`` -> off."""
    if value is None or value is False:
        return None
    if value is True:
        return Unique()
    if isinstance(value, Unique):
        return value
    raise ConfigError(f"unique: expected a bool or torchseq.Unique, got {type(value).__name__}")


def _ids_key(ids: Any) -> Hashable:
    return ("ids", tuple(ids.tolist() if hasattr(ids, "tolist") else ids))


def record_keys(record: Record, key: Callable[[str], Hashable], guid: bool) -> frozenset[Hashable]:
    """The identities a record brings into a batch: its texts (token ids when it has none) and guid."""
    keys: set[Hashable] = set()
    tokens = record.get("tokens") or {}
    for name in ("anchor", "positive"):
        text = record.get(name)
        if text is not None:
            keys.add(key(text))
        elif name in tokens:
            keys.add(_ids_key(tokens[name]))
    negatives = record.get("negatives")
    if negatives is not None:
        keys.update(key(text) for text in negatives)
    elif "negatives" in tokens:
        keys.update(_ids_key(ids) for ids in tokens["negatives"])
    if guid and record.get("guid") is not None:
        keys.add(("guid", record["guid"]))
    return frozenset(keys)


class Limit(Protocol):
    """How big a batch may grow: the batching stage's own rule, kept incrementally."""

    def fits(self, record: Record) -> bool: ...

    def add(self, record: Record) -> None: ...

    def full(self) -> bool: ...

    def reset(self) -> None: ...


class UniquePacker:
    """Greedy duplicate-free packing of an ordered record stream, with bounded deferral.

    ``push`` places records in order; finished batches collect in ``ready``.
    ``take_back`` returns what is still held (the partial batch and the
    deferred records) so a pooled batcher can sort it into its next pool;
    ``finish`` applies the leftover rule at the end of the epoch.

    With ``planned`` (the batches this worker must yield this epoch, under
    DDP balancing) a record never costs an extra batch: where ``"smaller"``
    would cut a batch short and the plan cannot afford it, the record joins a
    full batch instead (counted in ``forced``).

    State: ``current`` (the batch being filled), ``deferred`` (held-back
    records, oldest first), ``ready``, ``emitted`` (batches this epoch),
    ``counters``.
    """

    def __init__(
        self, options: Unique, limit: Limit, resume: Saved | None = None, planned: int | None = None
    ) -> None:
        self.options = options
        self.limit = limit
        self.planned = planned
        self._encoder = SnapshotEncoder()
        self.emitted = 0
        self.current: list[Record] = []
        self.current_keys: set[Hashable] = set()
        self.deferred: list[Record] = []
        self.deferred_keys: list[frozenset[Hashable]] = []
        self.ready: list[list[Record]] = []
        self.counters: dict[str, int] = {name: 0 for name in COUNTERS}
        if resume is not None:
            self._resume(resume)

    def _resume(self, saved: Saved) -> None:
        self.emitted = saved.integer("emitted", 0, self.planned)
        self.ready = saved.batches("ready")
        counts = saved.counts("counters", [f"unique.{name}" for name in COUNTERS])
        for name, value in counts.items():
            self.counters[name.removeprefix("unique.")] = value
        for record in saved.records("current"):
            if not isinstance(record, dict):
                raise saved.wrong("current", "records (dicts)")
            self._add(record, self._keys(record))
        deferred = saved.records("deferred")
        if len(deferred) > self.options.max_deferred or not all(isinstance(r, dict) for r in deferred):
            raise saved.wrong("deferred", f"at most max_deferred={self.options.max_deferred} records (dicts)")
        for record in deferred:
            self._hold(record, self._keys(record))

    # ----------------------------------------------------------- state
    def snapshot(self) -> State:
        encoder = self._encoder
        state = {
            "current": encoder.encode(self.current),
            "deferred": encoder.encode(self.deferred),
            "ready": encoder.encode_batches(self.ready),
            "emitted": self.emitted,
            "counters": {f"unique.{name}": value for name, value in self.counters.items()},
        }
        encoder.done()
        return state

    def statistics(self) -> dict[str, int]:
        """The counters, prefixed ``unique.`` (the running stage's ``counters()``)."""
        return {f"unique.{name}": value for name, value in self.counters.items()}

    @property
    def holding(self) -> bool:
        """Whether records are held (a partial batch or deferred ones)."""
        return bool(self.current or self.deferred)

    # ----------------------------------------------------------- placing
    def _keys(self, record: Record) -> frozenset[Hashable]:
        return record_keys(record, self.options.key, self.options.guid)

    def _add(self, record: Record, keys: frozenset[Hashable]) -> None:
        self.current.append(record)
        self.current_keys |= keys
        self.limit.add(record)

    def _hold(self, record: Record, keys: frozenset[Hashable]) -> None:
        self.deferred.append(record)
        self.deferred_keys.append(keys)

    def _unhold(self, index: int) -> tuple[Record, frozenset[Hashable]]:
        return self.deferred.pop(index), self.deferred_keys.pop(index)

    def _emit(self, smaller: bool = False) -> None:
        if self.current:
            self.ready.append(self.current)
            self.emitted += 1
            self.counters["smaller"] += smaller
        self.current = []
        self.current_keys = set()
        self.limit.reset()

    def _refill(self) -> None:
        """Start filling from the deferred records, oldest first; emit batches that fill up."""
        index = 0
        while index < len(self.deferred):
            if self.deferred_keys[index] & self.current_keys:
                index += 1
                continue
            if self.current and not self.limit.fits(self.deferred[index]):
                self._emit()
                index = 0
                continue
            self._add(*self._unhold(index))
            if self.limit.full():
                self._emit()
                index = 0

    def push(self, record: Record, seen: int = NEW) -> None:
        """Place one record; ``seen`` says whether it was counted before (:meth:`take_back`)."""
        self.counters["records"] += seen == NEW
        self._place(record, self._keys(record), seen == DEFERRED)

    def _place(self, record: Record, keys: frozenset[Hashable], counted: bool) -> None:
        if self.current and not keys & self.current_keys and not self.limit.fits(record):
            self._emit()
            self._refill()
        if keys & self.current_keys:
            self.counters["deferrals"] += not counted
            self._hold(record, keys)
            if len(self.deferred) > self.options.max_deferred:
                self._overflow()
            return
        self._add(record, keys)
        if self.limit.full():
            self._emit()
            self._refill()

    def _overflow(self) -> None:
        """The deferral buffer is full: the oldest deferred record meets the leftover rule now."""
        rule = self.options.leftover
        if rule == "smaller" and self.planned is not None:
            rule = "duplicates"  # a smaller batch mid-epoch would cost the plan a batch
        if rule == "drop":
            self._unhold(0)
            self.counters["dropped"] += 1
        elif rule == "duplicates":
            record, keys = self._unhold(0)
            if self.current and not self.limit.fits(record):
                self._emit()
            self.counters["forced"] += bool(keys & self.current_keys)
            self._add(record, keys)
            if self.limit.full():
                self._emit()
            self._refill()
        else:
            self._emit(smaller=True)
            self._refill()

    def take_back(self) -> list[tuple[Record, int]]:
        """Everything held, for a pooled batcher's next pool: ``(record, seen)`` pairs."""
        held = [(r, SEEN) for r in self.current] + [(r, DEFERRED) for r in self.deferred]
        self.current, self.current_keys = [], set()
        self.limit.reset()
        self.deferred, self.deferred_keys = [], []
        return held

    def finish(self, drop_incomplete: bool = False) -> None:
        """End of epoch: place what is held, applying the leftover rule to what cannot be."""
        rule = self.options.leftover
        while True:
            self._refill()
            if not self.deferred:
                break
            # Every held record repeats a text of the current batch.
            if rule == "drop":
                self.counters["dropped"] += len(self.deferred)
                self.deferred, self.deferred_keys = [], []
                break
            if rule == "smaller" and self._can_cut_short():
                self._emit(smaller=True)
                continue
            while self.deferred and not self.limit.full():
                if self.current and not self.limit.fits(self.deferred[0]):
                    break
                self.counters["forced"] += 1
                self._add(*self._unhold(0))
            self._emit()
        if self.current and drop_incomplete:
            self.counters["dropped"] += len(self.current)
            self.current, self.current_keys = [], set()
            self.limit.reset()
        self._emit()

    def _can_cut_short(self) -> bool:
        """Whether the plan, if any, leaves room for one more batch after a short one."""
        size = getattr(self.limit, "size", None)
        if self.planned is None or not isinstance(size, int):
            return True
        return len(self.deferred) <= (self.planned - self.emitted - 1) * size

    def drain(self) -> Iterator[list[Record]]:
        """Yield ready batches in order; each leaves ``ready`` before it is yielded."""
        ready = self.ready
        while ready:
            yield ready.pop(0)

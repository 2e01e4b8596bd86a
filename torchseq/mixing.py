"""Mixtures of pair datasets: ``ts.mix({"name": pipeline, ...})``.

Sentence-embedding models are trained on dozens of pair datasets at once,
each drawn with a target probability: given weights, or proportional to its
size with a temperature, ``p_i ∝ min(n_i, cap) ** (1 / T)`` (T5 / seqio; the
all-MiniLM recipe). The mixture is itself a :class:`~torchseq.Pipeline`; its
children are pipelines run inside the same worker with the same context, and
their state nests in the mixture's state, so a mixture resumes exactly.

Two levels:

* ``level="record"``: records interleaved; batch, tokenize, collate after the
  mixture. Sources must give records of one shape (same number of
  negatives): batches never mix pairs and triplets.
* ``level="batch"``: every child ends in a batching stage (and possibly
  ``collate``), and each batch comes whole from one source -- what in-batch
  negatives want (no easy negatives from another domain). The source of step
  ``s`` is a pure function of ``(seed, epoch, s)``: every rank of a DDP job
  draws the same source at the same step without communicating, so
  embeddings gathered across ranks share a source. DataLoader workers deal
  steps round-robin (worker ``w`` of ``k`` serves ``w, w + k, ...``), and
  each worker computes the draws of exactly its own steps.

Stop rules: ``"first_exhausted"`` ends the epoch when a drawn source runs dry;
``"all_exhausted"`` drops dry sources and renormalises until none is left;
``"never"`` restarts a dry source (a new pass, reshuffled) and runs until the
training loop stops (``max_steps``). Sources run dry per DataLoader worker.
Each source is balanced across ranks on its own (:mod:`torchseq.plan`:
the same number of batches on every rank, dealt alike to the workers), so at
batch level every rank's workers run dry at the same steps: all ranks yield
the same number of batches and the same source at every step, under every
stop rule. At record level the batches are cut after the mixture and ranks
may differ by a batch at the end of an epoch: under DDP use ``"never"``
there, or batch level.

Each element is tagged with its source name (``tag="dataset"``): records get
``record["dataset"]``, collated batches ``batch["dataset"]`` (one per row).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

from torchseq.context import Context
from torchseq.errors import ConfigError, DataError, StateError
from torchseq.pipeline import Pipeline, Run
from torchseq.pipeline.stats import merge
from torchseq.protocol import Counters, Running
from torchseq.rng import derive_seed, seeded_random
from torchseq.sources.base import ShardSource
from torchseq.sources.index import shard_counts
from torchseq.state import Saved, State, check_field, within

Stop = Literal["first_exhausted", "all_exhausted", "never"]
Level = Literal["record", "batch"]
STOP_CHOICES = ("first_exhausted", "all_exhausted", "never")
LEVEL_CHOICES = ("record", "batch")


# ---------------------------------------------------------------- weights
def count_records(pipe: Pipeline) -> int:
    """Records the pipeline's source holds in one epoch (all ranks and workers together).

    The one place mixture weights get sizes from: the shard index of
    :mod:`torchseq.sources.index` (counted once, cached beside the shards). Other
    sources are read once in this process.
    """
    source = pipe.source
    if isinstance(source, MixSource):
        return sum(count_records(child) for child in source.children)
    if isinstance(source, ShardSource):
        return sum(shard_counts(source))
    return sum(1 for _ in source.open(Context(), {}).iterator)


def mixture_weights(
    sizes: Sequence[float], temperature: float = 1.0, cap: float | None = None
) -> tuple[float, ...]:
    """Normalised ``min(n_i, cap) ** (1 / temperature)``.

    ``temperature=1`` samples in proportion to size; larger temperatures
    flatten towards uniform; ``cap`` stops huge sources from dominating.
    """
    if temperature <= 0:
        raise ConfigError(f"mix: temperature must be > 0, got {temperature}")
    if cap is not None and cap <= 0:
        raise ConfigError(f"mix: cap must be > 0, got {cap}")
    if any(n < 0 for n in sizes):
        raise ConfigError(f"mix: sizes and weights must be >= 0, got {list(sizes)}")
    scaled = [(min(n, cap) if cap is not None else n) ** (1.0 / temperature) for n in sizes]
    total = sum(scaled)
    if total <= 0:
        raise ConfigError("mix: every source has weight 0 (empty sources?)")
    return tuple(w / total for w in scaled)


def mix(
    sources: Mapping[str, Pipeline],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    temperature: float = 1.0,
    cap: int | None = None,
    *,
    stop: Stop = "first_exhausted",
    level: Level = "record",
    seed: int = 0,
    tag: str | None = "dataset",
) -> Pipeline:
    """Mix pipelines into one.

    Args:
        sources: name -> pipeline, in a fixed order (the names appear in
            batches and stats).
        weights: per source (a mapping by name or a sequence in order); by
            default each source's record count (:func:`count_records`).
            Either way ``temperature`` applies; ``cap`` only to counts.
        temperature: ``p_i ∝ w_i ** (1 / temperature)``.
        cap: with counted weights, ``n_i`` is capped at ``cap`` records.
        stop: ``"first_exhausted"``, ``"all_exhausted"`` or ``"never"`` (module docs).
        level: ``"record"`` or ``"batch"`` (source-homogeneous batches).
        seed: seeds the draws (with the epoch, and at record level the rank and worker).
        tag: field receiving the source name; ``None`` leaves elements untouched.

    Raises:
        ConfigError: invalid arguments; sources of different shapes at record level
            (while iterating).
    """
    names = tuple(sources)
    children = tuple(sources.values())
    if not names:
        raise ConfigError("mix: no sources given")
    for name, child in sources.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"mix: source names must be non-empty strings, got {name!r}")
        if not isinstance(child, Pipeline):
            raise ConfigError(f"mix: source {name!r} is a {type(child).__name__}, not a Pipeline")
    if stop not in STOP_CHOICES:
        raise ConfigError(f"mix: stop must be one of {STOP_CHOICES}, got {stop!r}")
    if level not in LEVEL_CHOICES:
        raise ConfigError(f"mix: level must be one of {LEVEL_CHOICES}, got {level!r}")
    if weights is None:
        sizes: list[float] = [float(count_records(child)) for child in children]
    else:
        if cap is not None:
            raise ConfigError("mix: cap applies to counted sizes; with explicit weights leave it None")
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            missing = [n for n in names if n not in weights]
            if unknown or missing:
                raise ConfigError(f"mix: weights name {sorted(unknown)} unknown, {missing} missing")
            sizes = [float(weights[n]) for n in names]
        else:
            sizes = [float(w) for w in weights]
            if len(sizes) != len(names):
                raise ConfigError(f"mix: {len(sizes)} weights for {len(names)} sources")
    probabilities = mixture_weights(sizes, temperature, cap)
    return Pipeline(MixSource(names, children, probabilities, stop, level, seed, tag))


# ---------------------------------------------------------------- running
def _uniform(*parts: object) -> float:
    return derive_seed(*parts) / 2.0**64


def _pass_epoch(epoch: int, passes: int) -> int:
    """The epoch a child runs with on its ``passes``-th restart within one mixture epoch."""
    # Pass 0 is the mixture's own epoch, so a one-source mixture equals its source.
    return epoch if passes == 0 else derive_seed("mix-pass", epoch, passes) >> 2


def _shape(record: Any) -> int:
    negatives = record.get("negatives")
    if negatives is None:
        negatives = (record.get("tokens") or {}).get("negatives", ())
    return len(negatives)


def _rows(element: Any) -> int:
    if isinstance(element, list):
        return len(element)
    anchor = element.get("anchor") if isinstance(element, dict) else None
    if isinstance(anchor, dict) and "input_ids" in anchor:
        return int(anchor["input_ids"].shape[0])
    raise ConfigError(
        "mix(level='batch'): sources must yield batches; end each source with "
        ".batch()/.bucket()/.batch_by_tokens() (optionally .collate())"
    )


class _Child:
    """One source's live run inside one mixture run (a new run per pass under ``stop="never"``)."""

    __slots__ = ("name", "pipe", "ctx", "passes", "run", "exhausted", "earlier")

    def __init__(self, name: str, pipe: Pipeline, ctx: Context, saved: Saved | None) -> None:
        self.name, self.pipe, self.ctx = name, pipe, ctx
        self.earlier: Counters = {}  # what the finished passes counted
        self.passes = saved.integer("passes") if saved is not None else 0
        self.exhausted = saved.flag("exhausted") if saved is not None else False
        stream = saved.nested("stream", empty=False) if saved is not None else None
        if stream is not None:
            check_field(stream.field("epoch"), stream.value.get("epoch"), _pass_epoch(ctx.epoch, self.passes),
                        f" (from epoch {ctx.epoch} and passes {self.passes})")
        try:
            self.run = self._open(stream.value if stream is not None else None)
        except StateError as exc:  # only a resumed child's state is checked
            raise within(stream.where if stream is not None else "stream", exc) from None

    def _open(self, state: State | None) -> Run:
        ctx = dataclasses.replace(self.ctx, epoch=_pass_epoch(self.ctx.epoch, self.passes), plan=None)
        return Run(self.pipe, ctx, state, nested=True)

    @property
    def iterator(self) -> Any:
        return self.run.iterator

    def restart(self) -> None:
        merge(self.earlier, self.run.counters())
        self.passes += 1
        self.run = self._open(None)

    def counters(self) -> Counters:
        return merge(merge({}, self.earlier), self.run.counters())

    def snapshot(self) -> State:
        return {"passes": self.passes, "exhausted": self.exhausted, "stream": self.run.state_dict()}


_END = object()


@dataclass(frozen=True)
class MixSource:
    """The source of a mixed pipeline (built by :func:`mix`).

    State: ``sources`` (names), ``children`` (each child's nested stage
    states, pass number, exhausted flag), ``step`` (batch level: batches this
    worker delivered) or ``rng`` (record level), ``counters``
    (``mix.<name>.records`` / ``.batches`` delivered by this worker).
    """

    names: tuple[str, ...]
    children: tuple[Pipeline, ...]
    probabilities: tuple[float, ...]
    stop: Stop = "first_exhausted"
    level: Level = "record"
    seed: int = 0
    tag: str | None = "dataset"

    @property
    def targets(self) -> dict[str, float]:
        """Target share per source name."""
        return dict(zip(self.names, self.probabilities, strict=True))

    def __repr__(self) -> str:
        shares = ", ".join(f"{n!r}: {p:.3f}" for n, p in zip(self.names, self.probabilities, strict=True))
        lines = [f"MixSource(level={self.level!r}, stop={self.stop!r}, seed={self.seed}, {{{shares}}})"]
        for name, child in zip(self.names, self.children, strict=True):
            lines += [f"    [{name}] " + line.strip() for line in repr(child).splitlines()[1:]]
        return "\n".join(lines)

    def settings(self) -> dict[str, Any]:
        return {"names": list(self.names), "probabilities": list(self.probabilities), "stop": self.stop,
                "level": self.level, "seed": self.seed, "tag": self.tag}

    def open(self, ctx: Context, state: State) -> Running:
        return _Mixing(self, ctx, Saved(state) if state else None)

    # ------------------------------------------------------------- drawing
    def _active(self, children: list[_Child]) -> tuple[list[int], list[float]]:
        indices = [i for i, c in enumerate(children) if not c.exhausted]
        return indices, list(accumulate(self.probabilities[i] for i in indices))

    def _next(self, child: _Child, ctx: Context) -> Any:
        """The child's next element, restarting it under ``stop="never"``; ``_END`` when dry."""
        item = next(child.iterator, _END)
        if item is _END and self.stop == "never":
            child.restart()
            item = next(child.iterator, _END)
            if item is _END:
                raise DataError(
                    f"mix: source {child.name!r} yields nothing for rank {ctx.rank} worker "
                    f"{ctx.worker}, so it cannot be cycled (stop='never'); give it more records "
                    "and shards than ranks x workers"
                )
        return item

    def _draw(self, children: list[_Child], u: float, ctx: Context) -> tuple[_Child, Any] | None:
        """The source and element for uniform draw ``u``; ``None`` when the epoch ends."""
        indices, cumulative = self._active(children)
        while indices:
            pick = indices[min(bisect.bisect_right(cumulative, u * cumulative[-1]), len(indices) - 1)]
            child = children[pick]
            item = self._next(child, ctx)
            if item is not _END:
                return child, item
            child.exhausted = True
            if self.stop == "first_exhausted":
                break
            indices, cumulative = self._active(children)
        return None

    def _check_shape(self, shapes: dict[str, int], name: str, shape: int) -> None:
        for other, other_shape in shapes.items():
            if other_shape != shape:
                raise ConfigError(
                    f"mix(level='record'): source {other!r} gives records with {other_shape} negatives, "
                    f"{name!r} with {shape}: interleaved they would share batches. Use level='batch' "
                    "(source-homogeneous batches) or .sample_pairs(num_negatives=k) in every source"
                )
        shapes[name] = shape


class _Mixing(Running):
    """A mixture at work: its children's runs, the draws, the deliveries per source."""

    __slots__ = ("mix", "ctx", "children", "counts", "step", "rng")

    def __init__(self, mix: MixSource, ctx: Context, saved: Saved | None) -> None:
        self.mix, self.ctx = mix, ctx
        self.counts = {f"mix.{n}.{unit}": 0 for n in mix.names for unit in ("records", "batches")}
        children = saved.nested("children") if saved is not None else None
        if saved is not None and children is not None:
            check_field("sources", saved.get("sources"), list(mix.names))
            for extra in set(children.value) - set(mix.names):  # each name's state is read below
                raise children.wrong(extra, f"no such source (it has {list(mix.names)})")
            self.counts.update(saved.counts("counters", self.counts))
        self.children = [_Child(name, pipe, ctx, children.nested(name) if children is not None else None)
                         for name, pipe in zip(mix.names, mix.children, strict=True)]
        self.step = sum(self.counts[f"mix.{n}.batches"] for n in mix.names)  # each batch counts for its source
        self.rng: random.Random | None = None
        if mix.level == "record":
            self.rng = seeded_random("mix", mix.seed, ctx.epoch, ctx.rank, ctx.worker)
            if saved is not None:
                saved.rng("rng", self.rng)
            self.iterator = self._records(self.rng)
        else:
            if saved is not None:
                check_field("step", saved.get("step"), self.step, " (the sum of its counters mix.*.batches)")
            self.iterator = self._batches()

    def state_dict(self) -> State:
        position: State = {"rng": self.rng.getstate()} if self.rng is not None else {"step": self.step}
        return {"sources": list(self.mix.names), "children": {c.name: c.snapshot() for c in self.children},
                "counters": dict(self.counts), **position}

    def counters(self) -> Counters:
        """Deliveries per source, plus everything the children counted."""
        out: Counters = dict(self.counts)
        for child in self.children:
            merge(out, child.counters())
        return out

    def _records(self, rng: random.Random) -> Iterator[Any]:
        mix, children, counters, ctx = self.mix, self.children, self.counts, self.ctx
        tag = mix.tag
        shapes: dict[str, int] = {}
        while True:
            drawn = mix._draw(children, rng.random(), ctx)
            if drawn is None:
                return
            child, record = drawn
            if type(record) is not dict:
                raise ConfigError(
                    f"mix(level='record'): source {child.name!r} yields {type(record).__name__}s, not "
                    "records; batch after mixing, or use level='batch'"
                )
            if child.name not in shapes:
                mix._check_shape(shapes, child.name, _shape(record))
            if tag is not None:
                record[tag] = child.name
            counters[f"mix.{child.name}.records"] += 1
            yield record

    def _batches(self) -> Iterator[Any]:
        mix, children, counters, ctx = self.mix, self.children, self.counts, self.ctx
        tag = mix.tag
        while True:
            # The rank-level step this worker serves next (DataLoader round-robin).
            step = ctx.worker + self.step * ctx.num_workers
            drawn = mix._draw(children, _uniform("mix-step", mix.seed, ctx.epoch, step), ctx)
            if drawn is None:
                return
            child, batch = drawn
            rows = _rows(batch)
            if tag is not None:
                if isinstance(batch, list):
                    for record in batch:
                        record[tag] = child.name
                else:
                    batch[tag] = [child.name] * rows
            counters[f"mix.{child.name}.records"] += rows
            counters[f"mix.{child.name}.batches"] += 1
            self.step += 1
            yield batch

"""Tampered and truncated checkpoints: every malformed field is refused with a StateError naming it.

A real checkpoint is taken mid-epoch from pipelines that hold state in every
stage -- a source inside a shard, a shuffle buffer, tokenize's pending
records, bucket pools with ``unique=``, the step guard of a 2-rank plan,
mixtures at batch and record level -- with 0 workers, and from each worker of
a 2-worker ``StatefulDataLoader``. Every field of it is then mutated, one at a
time (deleted, ``None``, a wrong type, negative, huge, a position moved past
the end, emptied, a record's bytes truncated), and loaded into a fresh
pipeline. The load must raise :class:`~torchseq.StateError` whose message
starts with the field (or the field holding it), or the mutation is one of
the few :func:`harmless` ones and the run resumes exactly as from the
untouched checkpoint. Nothing else may escape.

What is not mutated: the content of held records (their bytes are data, like
a shard's lines) and Mersenne Twister words moved within range (another valid
generator state); a checkpoint edited into another self-consistent state is
not detectable without a signature.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from tests.conftest import write_jsonl
from tests.support.resume import fingerprint, weights_only_roundtrip
from torchseq.context import Context
from torchseq.errors import BalanceWarning
from torchseq.tools.sample import sample_tokenizer

TOK = sample_tokenizer()
Path_ = tuple[Any, ...]


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"anchor": f"query {i} " + "x " * (i % 5), "positive": f"document {i} " + "words " * (i % 11),
             "guid": i} for i in range(start, start + n)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("tamper")
    out: dict[str, list[str]] = {}
    start = 0
    for name, sizes in {"main": [23, 9, 31, 17], "a": [14, 11], "b": [19]}.items():
        out[name] = []
        for k, size in enumerate(sizes):
            out[name].append(write_jsonl(root / f"{name}-{k}.jsonl", rows(start, size)))
            start += size
    return out


def single(s: dict[str, list[str]]) -> ts.Pipeline:
    return (ts.read_jsonl(s["main"]).shuffle(12, seed=1).tokenize(TOK, 24, chunk_size=8)
            .bucket(4, pool_batches=3, seed=2, unique=True).collate())


def ranked(s: dict[str, list[str]]) -> ts.Pipeline:
    # Rank 0 of 2: a balanced plan with item ranges, and the step guard.
    return (ts.read_jsonl(s["main"]).shuffle(6, seed=3).sample_pairs(swap=True, seed=4)
            .tokenize(TOK, 16, chunk_size=5).batch(4, unique=True).collate().with_topology(0, 2))


def mixed_batches(s: dict[str, list[str]]) -> ts.Pipeline:
    return ts.mix({"a": ts.read_jsonl(s["a"]).tokenize(TOK, 16).batch_by_tokens(96, pool_size=12).collate(),
                   "b": ts.read_jsonl(s["b"]).shuffle(5, seed=3).batch(3)},
                  level="batch", stop="all_exhausted", seed=5)


def mixed_records(s: dict[str, list[str]]) -> ts.Pipeline:
    return (ts.mix({"a": ts.read_jsonl(s["a"]).sample_pairs(seed=1), "b": ts.read_jsonl(s["b"])},
                   weights=[1, 2], seed=6)
            .tokenize(TOK, 16).batch(4, drop_last=True).collate())


PIPELINES: dict[str, Callable[[dict[str, list[str]]], ts.Pipeline]] = {
    "single": single, "ranked": ranked, "mixed-batches": mixed_batches, "mixed-records": mixed_records,
}
CUT = 3  # batches delivered before the checkpoint


def run_rest(pipe: ts.Pipeline, ctx: Context, state: dict[str, Any]) -> list[Any]:
    pipe.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BalanceWarning)
        return [fingerprint(b) for b in pipe.iterate(ctx)]


class Case:
    """One checkpoint to tamper with: how to build the pipeline, where it runs, the untouched rest."""

    def __init__(self, make: Callable[[], ts.Pipeline], ctx: Context, state: dict[str, Any]) -> None:
        self.make, self.ctx, self.state = make, ctx, state
        self.rest = run_rest(make(), ctx, copy.deepcopy(state))
        assert self.rest, "the checkpoint is at the end: nothing to compare"


def in_process(name: str, s: dict[str, list[str]]) -> Case:
    pipe = PIPELINES[name](s)
    ctx = pipe.context()
    batches = pipe.iterate(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BalanceWarning)
        for _ in range(CUT):
            next(batches)
    return Case(lambda: PIPELINES[name](s), ctx, weights_only_roundtrip(pipe.state_dict()))


def from_workers(s: dict[str, list[str]]) -> list[Case]:
    """The state of each worker of a 2-worker ``StatefulDataLoader``, resumed as that worker would."""
    loader = StatefulDataLoader(ranked(s), batch_size=None, num_workers=2)
    batches = iter(loader)
    for _ in range(CUT * 2 + 1):
        next(batches)
    snapshot = weights_only_roundtrip(loader.state_dict())["_snapshot"]["_worker_snapshots"]
    del batches, loader
    return [Case(lambda: ranked(s), Context(0, 2, worker, 2), snapshot[f"worker_{worker}"]["dataset_state"])
            for worker in (0, 1)]


# ------------------------------------------------------------------ mutations
MISSING = object()


def field_paths(node: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Every dict key and list item below ``node``; long lists by their first, second and last items."""
    if path:
        yield path
    if isinstance(node, dict):
        if "__records__" in node and path and path[-1] != "stages":
            yield from collection_paths(node, path)
            return
        for key, value in node.items():
            yield from field_paths(value, (*path, key))
    elif isinstance(node, (list, tuple)):
        indices = range(len(node)) if len(node) <= 3 else (0, 1, len(node) - 1)
        for index in indices:
            yield from field_paths(node[index], (*path, index))


def collection_paths(node: dict[str, Any], path: Path_) -> Iterator[Path_]:
    """Held records: the collection's fields and each record's bytes as a whole (their content is data)."""
    for key, value in node.items():
        yield (*path, key)
        if isinstance(value, list):
            for index in range(len(value)) if len(value) <= 3 else (0, 1, len(value) - 1):
                yield (*path, key, index)


def get(node: Any, path: Path_) -> Any:
    for key in path:
        node = node[key]
    return node


def is_rng_word(path: Path_) -> bool:
    return len(path) >= 3 and path[-3] == "rng" and path[-2] == 1 and path[-1] != 624


def mutations(path: Path_, value: Any) -> Iterator[tuple[str, Any]]:
    yield "delete", MISSING
    if value is not None:
        yield "None", None
    if isinstance(value, bool):
        yield "wrong type", "yes"
    elif isinstance(value, int):
        yield "wrong type", str(value)
        yield "negative", -1 - value
        yield "huge", 2**64 + value
        if not is_rng_word(path):
            yield "past the end", value + 1000
    elif isinstance(value, float):
        yield "wrong type", str(value)
        yield "negative", -1.0 - value
        yield "huge", 1e300
    elif isinstance(value, (str, bytes)):
        yield "wrong type", 7
        if value:
            yield "empty", value[:0]
            if path and isinstance(path[-1], int) and len(path) >= 2 and path[-2] == "__records__":
                yield "truncated", value[: len(value) // 2]
    elif isinstance(value, dict):
        yield "wrong type", [1]
        if value:
            yield "empty", {}
    elif isinstance(value, (list, tuple)):
        yield "wrong type", {"x": 1}
        if value:
            yield "empty", type(value)()


def mutate(state: dict[str, Any], path: Path_, new: Any) -> dict[str, Any]:
    """A deep copy of ``state`` with the field at ``path`` replaced by ``new`` (or deleted)."""

    def replaced(node: Any, rest: Path_) -> Any:
        key = rest[0]
        items = list(node) if isinstance(node, tuple) else node
        if len(rest) > 1:
            items[key] = replaced(items[key], rest[1:])
        elif new is MISSING:
            del items[key]
        else:
            items[key] = new
        return tuple(items) if isinstance(node, tuple) else items

    out: dict[str, Any] = replaced(copy.deepcopy(state), path)
    return out


def field_name(path: Path_) -> str:
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif key.isidentifier():
            text += f".{key}" if text else key
        else:
            text += f"[{key!r}]"
    return text


COLLECTION_KEYS = frozenset({"__records__", "count", "sizes"})


def named_field(path: Path_) -> Path_:
    """The shortest path a message may name: the field, without trailing item indices or collection keys."""
    end = len(path)
    while end > 1 and (isinstance(path[end - 1], int) or path[end - 1] in COLLECTION_KEYS):
        end -= 1
    return path[:end]


def derived(message: str, path: Path_, new: Any) -> bool:
    """A field other fields are derived from, refused through them: the message says the value it came from.

    Another valid epoch plans another shard order (the source's cursor does not fit it), or another
    pass epoch of a mixture's child; ``passes`` moves a child's pass epoch; a mixture's ``step`` is
    the sum of its counters ``mix.*.batches``.
    """
    if path[-1] in ("epoch", "passes") and type(new) is int:
        return f"{path[-1]} {new}" in message
    if len(path) >= 2 and path[-2] == "counters" and str(path[-1]).endswith(".batches") or path[-1] == "counters":
        return "step: checkpoint has" in message and "the sum of its counters mix.*.batches" in message
    return False


def names_the_field(message: str, path: Path_, state: dict[str, Any], new: Any) -> bool:
    if derived(message, path, new):
        return True
    floor = len(named_field(path))
    if new is MISSING and len(get(state, path[:-1])) == 1:
        floor -= 1  # deleting the only field empties its parent: naming the parent names it
    return any(message.startswith(field_name(path[:k]) + s) for k in range(floor, len(path) + 1) for s in ":[.")


COUNTER_LEAVES = ("counters", "skipped")


def harmless(case: Case, path: Path_, mutation: str) -> bool:
    """Mutations that provably leave the stream alone (the run must then resume exactly)."""
    # Counters are reported, never read back into the stream: any number, or none at all.
    under_counters = any(key in COUNTER_LEAVES for key in path[:-1])
    if under_counters and mutation in ("delete", "huge", "past the end"):
        return True
    if path[-1] in COUNTER_LEAVES and mutation == "empty":
        return True
    # Without a split by record (stride 1) the source's item counter only feeds its record count.
    source = path[-1] == "counter" and len(path) >= 2 and path[-2] == 0 and path[-3] == "stages"
    if source and get(case.state, path[:-1])["stride"] == 1 and mutation in ("huge", "past the end"):
        return True
    # unique= counts its batches for a plan's budget only; without a plan (one process) it is unused.
    if path[-1] == "emitted" and mutation in ("huge", "past the end") and case.ctx.world_size == 1:
        return True
    return False


def check(case: Case, path: Path_, mutation: str, new: Any) -> str:
    """``"refused"`` or ``"harmless"``; any other outcome fails."""
    state = mutate(case.state, path, new)
    pipe = case.make()
    try:
        rest = run_rest(pipe, case.ctx, state)
    except ts.StateError as exc:
        message = str(exc)
        assert names_the_field(message, path, case.state, new), (
            f"{field_name(path)} {mutation}: the message names another field: {message}")
        return "refused"
    except Exception as exc:  # noqa: BLE001 - what escapes is the failure being tested for
        pytest.fail(f"{field_name(path)} {mutation}: {type(exc).__name__}: {exc}")
    assert harmless(case, path, mutation), (
        f"{field_name(path)} {mutation} was accepted; "
        + ("the run resumed identically, but this mutation is not listed as harmless"
           if rest == case.rest else f"the run differs ({len(rest)} batches, {len(case.rest)} expected)")
    )
    assert rest == case.rest, f"{field_name(path)} {mutation}: listed as harmless, but the run differs"
    return "harmless"


def tamper_everything(case: Case) -> dict[str, int]:
    outcomes = {"refused": 0, "harmless": 0}
    for path in list(field_paths(case.state)):
        value = get(case.state, path)
        for mutation, new in mutations(path, value):
            outcomes[check(case, path, mutation, new)] += 1
    return outcomes


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_tampered_field_is_refused_or_harmless(shards, name):
    outcomes = tamper_everything(in_process(name, shards))
    assert outcomes["refused"] > 100, outcomes


def test_every_tampered_field_of_a_worker_state_is_refused_or_harmless(shards):
    for case in from_workers(shards):
        outcomes = tamper_everything(case)
        assert outcomes["refused"] > 100, outcomes


def test_a_position_past_the_end_of_a_shard_is_refused(shards):
    """The reported case: the epoch ended after 2 of 13 batches. Now the position is checked against the shard."""
    case = in_process("single", shards)
    source = case.state["stages"][0]
    assert source["index"] > 0, "the checkpoint must be inside a shard"
    for field in ("index", "ordinal"):
        state = copy.deepcopy(case.state)
        state["stages"][0][field] += 1000
        with pytest.raises(ts.StateError, match=rf"^stages\[0\]\.{field}: checkpoint has"):
            run_rest(case.make(), case.ctx, state)


def test_an_emptied_source_state_is_refused(shards):
    """The reported case: an emptied source state read the epoch again from its start."""
    case = in_process("single", shards)
    state = copy.deepcopy(case.state)
    state["stages"][0] = {}
    with pytest.raises(ts.StateError, match=r"^stages\[0\]: checkpoint has no state, pipeline has a "
                                            r"JsonlSource that keeps one"):
        run_rest(case.make(), case.ctx, state)


def test_a_tampered_worker_state_is_named_through_the_loader(shards):
    loader = StatefulDataLoader(single(shards), batch_size=None, num_workers=1)
    batches = iter(loader)
    for _ in range(CUT):
        next(batches)
    state = weights_only_roundtrip(loader.state_dict())
    del batches, loader
    worker = state["_snapshot"]["_worker_snapshots"]["worker_0"]["dataset_state"]
    worker["stages"][0]["index"] += 1000
    fresh = StatefulDataLoader(single(shards), batch_size=None, num_workers=1)
    fresh.load_state_dict(state)
    with pytest.raises(ts.StateError, match=r"stages\[0\]\.index: checkpoint has"):
        list(itertools.islice(fresh, 5))

"""Exact mid-epoch resume: state saved in one process, loaded in another.

The pipeline shuffles (shard order and buffer), tokenizes with a logging
callable, buckets and collates, as rank 1 of 2 (balanced plan and step guard
on). For ``num_workers`` in {0, 2} one process runs the epoch and saves the
loader state after 0, 1, half, all-but-one and all batches; a second process
resumes from each state in a fresh loader.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts
from tests.conftest import REPO, write_jsonl
from tests.support.resume import check_resume, weights_only_roundtrip
from torchseq.context import Context
from torchseq.errors import BalanceWarning

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "resume_script.py"
SIZES = [90, 3, 0, 210, 41, 17]


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"anchor": f"query {i}", "positive": f"document {i} " + "words " * (i % 23), "guid": i}
        for i in range(start, start + n)
    ]


def write_shards(directory: Path, sizes: list[int]) -> list[str]:
    paths, start = [], 0
    for k, size in enumerate(sizes):
        paths.append(write_jsonl(directory / f"part-{k}.jsonl.gz", rows(start, size)))
        start += size
    return paths


def tokenized_anchors(out: Path, prefix: str) -> list[int]:
    texts = [json.loads(line) for log in out.glob(f"{prefix}.*") for line in log.read_text().splitlines()]
    return [int(t.split()[1]) for t in texts if t.startswith("query ")]


@pytest.fixture(scope="module", params=[0, 2], ids=lambda k: f"workers{k}")
def resumed(request, tmp_path_factory, tokenizer_file) -> dict[str, Any]:
    num_workers = request.param
    out = tmp_path_factory.mktemp(f"resume-{num_workers}")
    shards = write_shards(out, SIZES)
    config = out / "config.json"
    config.write_text(json.dumps(
        {"shards": shards, "tokenizer": tokenizer_file, "num_workers": num_workers, "out": str(out)}
    ))
    # The subprocess_env fixture is function-scoped; this module-scoped run builds the same.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for mode in ("save", "resume"):  # two separate processes
        done = subprocess.run([sys.executable, str(SCRIPT), mode, str(config)], env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{mode} failed:\n{done.stderr[-4000:]}"
    full = json.loads((out / "full.json").read_text())
    return {"out": out, "full": full, "num_workers": num_workers}


@pytest.mark.parametrize("which", ["0", "1", "mid", "last-batch", "end"])
def test_resume_in_a_new_process_is_exact(resumed, which):
    full, out = resumed["full"], resumed["out"]
    batches, cuts = full["batches"], full["cuts"]
    assert len(batches) == full["len"] and len(batches) >= 8
    cut = {"0": 0, "1": 1, "mid": len(batches) // 2, "last-batch": len(batches) - 1, "end": len(batches)}[which]
    assert cut in cuts
    rest = json.loads((out / f"rest-{cut}.json").read_text())
    assert len(rest) == len(batches) - cut
    assert rest == batches[cut:], f"cut {cut}: the resumed batches differ (ids or order)"


@pytest.mark.parametrize("which", ["1", "mid", "last-batch"])
def test_resume_does_not_tokenize_delivered_records(resumed, which):
    full, out = resumed["full"], resumed["out"]
    batches = full["batches"]
    cut = {"1": 1, "mid": len(batches) // 2, "last-batch": len(batches) - 1}[which]
    delivered = {g for batch in batches[:cut] for g in batch["guid"]}
    remaining = {g for batch in batches[cut:] for g in batch["guid"]}
    tokenized = tokenized_anchors(out, f"tok-resume-{cut}")
    assert delivered
    if which == "1":  # most records are still upstream of the tokenizer
        assert tokenized
    assert not delivered & set(tokenized), "resume re-tokenized records that were already delivered"
    assert set(tokenized) <= remaining
    # The uninterrupted run tokenized each of its records exactly once.
    once = tokenized_anchors(out, "tok-save")
    assert sorted(once) == sorted(delivered | remaining)


def make_local(shards: list[str], policy: str = "partial") -> ts.Pipeline:
    return ts.read_jsonl(shards).shuffle(buffer_size=20, seed=1).batch(8).balance(policy)


def state_after(pipe: ts.Pipeline, ctx: Context, n: int) -> dict[str, Any]:
    iterator = pipe.iterate(ctx)
    for _ in range(n):
        next(iterator)
    return weights_only_roundtrip(pipe.state_dict())


def test_changed_shards_are_named(tmp_path):
    shards = write_shards(tmp_path, [30, 50])
    ctx = Context(0, 2, 0, 1)
    state = state_after(make_local(shards), ctx, 2)
    write_jsonl(Path(shards[1]), rows(30, 57))  # the shard grew
    pipe = make_local(shards)
    pipe.load_state_dict(state)
    with pytest.raises(ts.StateError, match="num_records: checkpoint has 80, pipeline has 87"):
        next(pipe.iterate(ctx))


def test_changed_policy_and_topology_are_named(tmp_path):
    shards = write_shards(tmp_path, [30, 50])
    state = state_after(make_local(shards), Context(0, 2, 0, 1), 2)
    pipe = make_local(shards, "pad")
    pipe.load_state_dict(state)
    with pytest.raises(ts.StateError, match="policy: checkpoint has 'partial', pipeline has 'pad'"):
        next(pipe.iterate(Context(0, 2, 0, 1)))
    pipe = make_local(shards)
    pipe.load_state_dict(state)
    with pytest.raises(ts.StateError, match="world_size: checkpoint has 2, pipeline has 3"):
        next(pipe.iterate(Context(0, 3, 0, 1)))


def test_mismatch_through_a_worker_names_the_field(tmp_path):
    # One worker: torchdata takes MP_STATUS_CHECK_INTERVAL (5 s) per worker to
    # shut down workers that failed at startup.
    shards = write_shards(tmp_path, [30, 50])
    loader = StatefulDataLoader(make_local(shards).with_topology(0, 2), batch_size=None, num_workers=1)
    iterator = iter(loader)
    next(iterator)
    next(iterator)
    state = weights_only_roundtrip(loader.state_dict())
    del iterator
    fresh = StatefulDataLoader(make_local(shards, "drop").with_topology(0, 2), batch_size=None, num_workers=1)
    fresh.load_state_dict(state)
    with pytest.raises(ts.StateError, match="policy: checkpoint has 'partial', pipeline has 'drop'"):
        list(fresh)


def not_third(record: dict[str, Any]) -> bool:
    return bool(record["guid"] % 3)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_step_guard_resumes_exactly_while_repeating(tmp_path, num_workers):
    shards = write_shards(tmp_path, [40, 9, 33])

    def make() -> ts.Pipeline:
        # A third of the records filtered out: the guard repeats batches at the end.
        return ts.read_jsonl(shards).shuffle(10, seed=2).filter(not_third).batch(4).with_topology(0, 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BalanceWarning)
        full = check_resume(make, num_workers, cuts=("0", "1", "mid", "end", "last"))
    assert len(full) == len(make())


def test_state_is_builtins_only(tmp_path):
    shards = write_shards(tmp_path, [30, 50])
    state = state_after(make_local(shards), Context(1, 2, 0, 1), 3)

    def walk(value: Any) -> None:
        assert isinstance(value, (dict, list, tuple, str, int, float, bool, bytes, type(None))), type(value)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(state)
    assert state["plan"] == {"policy": "partial", "num_records": 80, "quantum": 8}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_between_snapshots_is_exact(tmp_path, tokenizer_file, num_workers):
    """With snapshot_every_n_steps (the cheap setting), a checkpoint between snapshots resumes exactly."""
    from tests.support.resume import fingerprint

    shards = write_shards(tmp_path, [90, 70, 120])

    def make() -> ts.Pipeline:
        return ts.read_jsonl(shards).shuffle(50, seed=3).tokenize(tokenizer_file, 32).bucket(8).collate()

    def loader(pipe: ts.Pipeline) -> StatefulDataLoader:
        return StatefulDataLoader(pipe, batch_size=None, num_workers=num_workers, snapshot_every_n_steps=5)

    full = [fingerprint(b) for b in loader(make())]
    for cut in (3, 12, len(full) - 2):
        first = loader(make())
        batches = iter(first)
        for _ in range(cut):
            next(batches)
        state = weights_only_roundtrip(first.state_dict())
        del batches, first
        fresh = loader(make())
        fresh.load_state_dict(state)
        assert [fingerprint(b) for b in fresh] == full[cut:], f"cut {cut}"


def test_an_older_checkpoint_is_refused(tmp_path):
    shards = write_shards(tmp_path, [30, 50])
    ctx = Context(0, 2, 0, 1)
    state = state_after(make_local(shards), ctx, 2)
    assert state["version"] == 4
    state["version"] = 3  # what torchseq wrote before checkpoints held the shard list and the settings
    pipe = make_local(shards)
    pipe.load_state_dict(state)
    with pytest.raises(ts.StateError, match="^version: checkpoint has 3, pipeline has 4; it was written by an older"):
        next(pipe.iterate(ctx))


@pytest.mark.parametrize("batches", [0, 1, 3, 5])
@pytest.mark.parametrize("world_size", [1, 2])
def test_positions_are_ranges_of_the_epochs_record_order(tmp_path, batches, world_size):
    """The source's ``read`` ranges hold exactly the records delivered or held in the stages after it."""
    from torchseq.state import decode_records

    sizes = [30, 50, 12]
    shards = write_shards(tmp_path, sizes)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    pipe = make_local(shards)
    iterator = pipe.iterate(Context(world_size - 1, world_size, 0, 1))
    delivered = [record["guid"] for _ in range(batches) for record in next(iterator)]
    state = weights_only_roundtrip(pipe.state_dict())
    source, shuffle, batch = state["stages"]
    held = [r["guid"] for r in decode_records(shuffle["buffer"]) + decode_records(batch["partial"])]
    read = []
    for shard, first, end in source["read"]:
        end = sizes[shard] if end is None else end
        read.extend(starts[shard] + item for item in range(first, end))
    assert sorted(delivered + held) == sorted(read)
    assert len(set(read)) == len(read)


# ------------------------------------------------------------------ a different stream is refused
# One process, no workers, no plan: the checks that once existed only for balanced plans.


def state_of(pipe: ts.Pipeline, n: int) -> dict[str, Any]:
    iterator = iter(pipe)
    for _ in range(n):
        next(iterator)
    return weights_only_roundtrip(pipe.state_dict())


def refused(pipe: ts.Pipeline, state: dict[str, Any]) -> str:
    """The StateError message of resuming ``pipe`` from ``state`` (it must be refused)."""
    with pytest.raises(ts.StateError) as caught:
        pipe.load_state_dict(state)
        next(iter(pipe))
    return str(caught.value)


def test_reordered_shards_are_refused(tmp_path):
    shards = write_shards(tmp_path, [20, 20, 20])
    state = state_of(ts.read_jsonl(shards).batch(4), 3)
    message = refused(ts.read_jsonl(shards[::-1]).batch(4), state)
    assert re.search(r"^stages\[0\]\.shards\[0\]: checkpoint has '[^']*part-0\.jsonl\.gz' \(\d+ bytes, "
                     r"mtime_ns \d+\), pipeline has '[^']*part-2\.jsonl\.gz'", message), message


def test_a_replaced_shard_is_refused(tmp_path):
    shards = write_shards(tmp_path, [20, 20])
    state = state_of(ts.read_jsonl(shards).batch(4), 2)
    write_jsonl(Path(shards[0]), rows(100, 20))  # new content, same path, same number of records
    message = refused(ts.read_jsonl(shards).batch(4), state)
    assert re.search(r"^stages\[0\]\.shards\[0\]: checkpoint has '[^']*part-0\.jsonl\.gz' \(\d+ bytes, mtime_ns "
                     r"\d+\), pipeline has '[^']*part-0\.jsonl\.gz' \(", message), message


VARIANTS = {
    "batch size": (lambda s: ts.read_jsonl(s).batch(4), lambda s: ts.read_jsonl(s).batch(5),
                   "settings[1].batch_size: checkpoint has 4, pipeline has 5"),
    "drop_last": (lambda s: ts.read_jsonl(s).batch(4), lambda s: ts.read_jsonl(s).batch(4, drop_last=True),
                  "settings[1].drop_last: checkpoint has False, pipeline has True"),
    "unique": (lambda s: ts.read_jsonl(s).batch(4, unique=True),
               lambda s: ts.read_jsonl(s).batch(4, unique=ts.Unique(leftover="drop")),
               "settings[1].unique.leftover: checkpoint has 'smaller', pipeline has 'drop'"),
    "shuffle buffer": (lambda s: ts.read_jsonl(s).shuffle(8, seed=1).batch(4),
                       lambda s: ts.read_jsonl(s).shuffle(9, seed=1).batch(4),
                       "settings[1].buffer_size: checkpoint has 8, pipeline has 9"),
    "shuffle seed": (lambda s: ts.read_jsonl(s).shuffle(8, seed=1).batch(4),
                     lambda s: ts.read_jsonl(s).shuffle(8, seed=2).batch(4),
                     "settings[0].shuffle_seed: checkpoint has 1, pipeline has 2"),
    "reader fields": (lambda s: ts.read_jsonl(s).batch(4),
                      lambda s: ts.read_jsonl(s, fields={"anchor": "positive", "positive": "anchor"}).batch(4),
                      "settings[0].fields: checkpoint has None, pipeline has {'anchor': 'positive', "),
    "sample_pairs": (lambda s: ts.read_jsonl(s).sample_pairs(swap=True).batch(4),
                     lambda s: ts.read_jsonl(s).sample_pairs(swap=False).batch(4),
                     "settings[1].swap: checkpoint has True, pipeline has False"),
    "max_length": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 64).batch(4),
                   lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 8).batch(4),
                   "settings[1].max_length: checkpoint has 64, pipeline has 8"),
    "tokenized fields": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch(4),
                         lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16, fields=["anchor"]).batch(4),
                         "settings[1].fields: checkpoint has ['anchor', 'positive', 'negatives'], "
                         "pipeline has ['anchor']"),
    "tokenizer": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch(4),
                  lambda s: ts.read_jsonl(s).tokenize(whitespace_ids, 16).batch(4),
                  "settings[1].tokenizer: checkpoint has 'tokenizer.json blake2b:"),
    "bucket": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).bucket(4, pool_batches=3),
               lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).bucket(4, pool_batches=2),
               "settings[2].pool_batches: checkpoint has 3, pipeline has 2"),
    "token budget": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch_by_tokens(128, pool_size=32),
                     lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch_by_tokens(96, pool_size=32),
                     "settings[2].max_tokens: checkpoint has 128, pipeline has 96"),
    "collate padding": (lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch(4).collate(),
                        lambda s: ts.read_jsonl(s).tokenize(TOKENIZER, 16).batch(4).collate(pad_to_multiple_of=8),
                        "settings[3].pad_to_multiple_of: checkpoint has None, pipeline has 8"),
}
TOKENIZER = str(REPO / "torchseq" / "data" / "tokenizer.json")


def whitespace_ids(texts: list[str]) -> list[list[int]]:
    return [[len(word) for word in text.split()][:16] for text in texts]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_changed_stage_setting_is_refused(tmp_path, name):
    saved, changed, expected = VARIANTS[name]
    shards = write_shards(tmp_path, [20, 20])
    state = state_of(saved(shards), 2)
    message = refused(changed(shards), state)
    assert message.startswith(expected), message
    # The unchanged pipeline resumes.
    pipe = saved(shards)
    pipe.load_state_dict(state)
    assert list(pipe)


def test_a_changed_setting_is_refused_through_workers(tmp_path):
    shards = write_shards(tmp_path, [30, 50])
    loader = StatefulDataLoader(ts.read_jsonl(shards).batch(4), batch_size=None, num_workers=1)
    iterator = iter(loader)
    next(iterator)
    state = weights_only_roundtrip(loader.state_dict())
    del iterator
    fresh = StatefulDataLoader(ts.read_jsonl(shards).batch(5), batch_size=None, num_workers=1)
    fresh.load_state_dict(state)
    with pytest.raises(ts.StateError, match=r"settings\[1\]\.batch_size: checkpoint has 4, pipeline has 5"):
        list(fresh)


def test_a_mixture_refuses_a_changed_child(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_shards(tmp_path / "a", [20, 10])
    b = write_shards(tmp_path / "b", [15])

    def make(size: int) -> ts.Pipeline:
        return ts.mix({"a": ts.read_jsonl(a).batch(size), "b": ts.read_jsonl(b).batch(3)}, level="batch")

    state = state_of(make(4), 3)
    message = refused(make(5), state)
    assert message.startswith("stages[0].children.a.stream.settings[1].batch_size: checkpoint has 4, "
                              "pipeline has 5"), message
    reordered = ts.mix({"a": ts.read_jsonl(a[::-1]).batch(4), "b": ts.read_jsonl(b).batch(3)}, level="batch")
    message = refused(reordered, state)
    assert message.startswith("stages[0].children.a.stream.stages[0].shards[0]: checkpoint has"), message


def test_the_datamodule_refuses_a_changed_pipeline(tmp_path):
    from torchseq.lightning import PairDataModule

    shards = write_shards(tmp_path, [20, 20])

    def make(max_length: int) -> ts.Pipeline:
        return ts.read_jsonl(shards).tokenize(TOKENIZER, max_length).batch(4).collate()

    module = PairDataModule(make(64), num_workers=0)
    loader = module.train_dataloader()
    batches = iter(loader)
    next(batches)
    loader.consumed()  # what on_before_batch_transfer does under a trainer
    state = weights_only_roundtrip(module.state_dict())
    del batches
    resumed = PairDataModule(make(8), num_workers=0)
    resumed.load_state_dict(state)
    with pytest.raises(ts.StateError, match=r"settings\[1\]\.max_length: checkpoint has 64, pipeline has 8"):
        list(resumed.train_dataloader())

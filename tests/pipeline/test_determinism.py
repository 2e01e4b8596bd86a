"""Same seed and topology -> the same batches, in separate processes; what changes otherwise.

Each process runs with a different ``PYTHONHASHSEED``, so nothing may depend
on Python's salted ``hash``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_jsonl

SCRIPT = Path(__file__).resolve().parents[1] / "support" / "order_script.py"
SIZES = [70, 5, 160, 0, 33, 12]
RUNS = {
    "base": {"epoch": 0, "num_workers": 2, "rank": 1, "world_size": 2, "seed": 0},
    "epoch1": {"epoch": 1, "num_workers": 2, "rank": 1, "world_size": 2, "seed": 0},
    "workers1": {"epoch": 0, "num_workers": 1, "rank": 1, "world_size": 2, "seed": 0},
    "workers0": {"epoch": 0, "num_workers": 0, "rank": 1, "world_size": 2, "seed": 0},
    "seed1": {"epoch": 0, "num_workers": 2, "rank": 1, "world_size": 2, "seed": 1},
    "rank0": {"epoch": 0, "num_workers": 2, "rank": 0, "world_size": 2, "seed": 0},
    "epoch1-rank0": {"epoch": 1, "num_workers": 2, "rank": 0, "world_size": 2, "seed": 0},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_file) -> list[dict[str, Any]]:
    from tests.conftest import REPO

    directory = tmp_path_factory.mktemp("determinism")
    shards, start = [], 0
    for k, size in enumerate(SIZES):
        rows = [{"anchor": f"query {i}", "positive": f"text {i} " + "x " * (i % 17), "guid": i}
                for i in range(start, start + size)]
        shards.append(write_jsonl(directory / f"part-{k}.jsonl.gz", rows))
        start += size
    config = directory / "config.json"
    config.write_text(json.dumps({"shards": shards, "tokenizer": tokenizer_file, "runs": list(RUNS.values())}))
    procs = []
    for hash_seed in ("1", "2"):  # two processes at once, differently salted hashes
        env = {"PYTHONPATH": str(REPO), "PYTHONHASHSEED": hash_seed, "TOKENIZERS_PARALLELISM": "false",
               "PATH": __import__("os").environ.get("PATH", "")}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), str(config)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-4000:]
        results.append(dict(zip(RUNS, json.loads(out), strict=True)))
    return results


def guids(batches: list[Any]) -> list[int]:
    return [g for batch in batches for g in batch["guid"]]


def test_same_seed_and_topology_give_identical_batches_across_processes(runs):
    first, second = runs
    for name in RUNS:
        assert first[name] == second[name], f"{name}: two processes produced different batches"
    assert len(first["base"]) > 5


def test_a_new_epoch_reorders_the_same_records(runs):
    base, epoch1 = runs[0]["base"], runs[0]["epoch1"]
    assert guids(base) != guids(epoch1)
    assert len(base) == len(epoch1)
    # Which records a rank gets follows the epoch's shard order; both ranks together get all.
    epoch0_all = guids(runs[0]["rank0"]) + guids(base)
    epoch1_all = guids(runs[0]["epoch1-rank0"]) + guids(epoch1)
    assert sorted(epoch0_all) == sorted(epoch1_all) == list(range(sum(SIZES)))


def test_a_new_seed_reorders(runs):
    assert guids(runs[0]["base"]) != guids(runs[0]["seed1"])


def test_worker_count_keeps_each_ranks_records_and_length(runs):
    # Documented: the number of DataLoader workers changes the order and batch
    # composition (shuffle buffers and buckets are per worker), never which
    # records a rank gets in an epoch nor how many batches it yields.
    base = runs[0]["base"]
    for name in ("workers1", "workers0"):
        other = runs[0][name]
        assert len(other) == len(base)
        assert sorted(guids(other)) == sorted(guids(base))
    assert runs[0]["workers1"] == runs[0]["workers0"]  # one worker in a subprocess = no worker
    assert guids(runs[0]["workers1"]) != guids(base)


def test_ranks_split_the_epoch(runs):
    rank0, rank1 = guids(runs[0]["rank0"]), guids(runs[0]["base"])
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == list(range(sum(SIZES)))

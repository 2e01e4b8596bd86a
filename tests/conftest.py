"""Shared fixtures: tiny shards (good and broken) written into tmp_path."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

from torchseq.tools.sample import sample_shards, sample_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_file() -> str:
    return sample_tokenizer()


@pytest.fixture(scope="session")
def sample_files() -> list[str]:
    return sample_shards()


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child processes that import this checkout's torchseq."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def pair(i: int) -> list[str]:
    """A distinct, human-looking pair whose texts encode its index."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    tail = " ".join(words[(i + k) % len(words)] for k in range(i % 13))
    return [f"query {i} about {words[i % 8]}", f"document {i} explains {words[i % 8]} {tail}".strip()]


def write_jsonl(path: Path, rows: list[Any], compress: bool | None = None) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if compress if compress is not None else path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., list[str]]:
    """``make_shards(sizes, suffix=".jsonl.gz")`` -> shard paths holding pairs 0..sum(sizes)-1."""

    def make(sizes: list[int], suffix: str = ".jsonl.gz", start: int = 0) -> list[str]:
        paths, n = [], start
        for k, size in enumerate(sizes):
            rows = [pair(i) for i in range(n, n + size)]
            n += size
            paths.append(write_jsonl(tmp_path / f"shard-{k:05d}{suffix}", rows))
        return paths

    return make


def anchor_index(anchor: str) -> int:
    """Inverse of :func:`pair` for the anchor text."""
    return int(anchor.split()[1])


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"test leaked threads: {leaked}"

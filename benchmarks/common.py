"""Shared by the benchmark scripts: data paths, the reference tokenization, checking.

The data lives beside the repository (``../shared/data``), as for every
benchmark here; nothing is downloaded. Derived files (the reference ids,
pre-tokenized shards) are cached in ``benchmarks/.cache`` (git-ignored), keyed
by a hash of their inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per process, for every system

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
JSONL_SHARDS = sorted(str(p) for p in (DATA / "debian-pairs").glob("train-*.jsonl.gz"))
WDS_SHARDS = sorted(str(p) for p in (DATA / "debian-pairs-wds").glob("train-*.tar.gz"))
TOKENIZER_DIR = DATA / "tokenizer"
TOKENIZER = str(TOKENIZER_DIR / "tokenizer.json")
CACHE = Path(__file__).resolve().parent / ".cache"
BATCH_SIZE = 64
MAX_LENGTH = 128

Row = tuple[tuple[int, ...], tuple[int, ...]]


def _digest(paths: Iterable[str], *extra: object) -> str:
    h = hashlib.sha256(repr(extra).encode())
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def read_pairs(shards: list[str]) -> list[tuple[str, str]]:
    """All (anchor, positive) pairs of the JSONL shards, in file order."""
    pairs = []
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                anchor, positive = json.loads(line)[:2]
                pairs.append((anchor, positive))
    return pairs


def reference_rows(shards: list[str]) -> Counter[Row]:
    """The reference: ``Tokenizer.from_file(...); enable_truncation(128); encode(text).ids``,
    one text at a time, for every pair of ``shards`` (cached)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"reference-{_digest([*shards, TOKENIZER], MAX_LENGTH)}.pkl"
    if path.exists():
        rows: Counter[Row] = pickle.loads(path.read_bytes())
        return rows
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(MAX_LENGTH)
    rows = Counter((tuple(tok.encode(a).ids), tuple(tok.encode(p).ids)) for a, p in read_pairs(shards))
    path.write_bytes(pickle.dumps(rows))
    return rows


def pretokenized_dir(shards: list[str]) -> str:
    """``torchseq pretokenize`` of ``shards`` (same shard split: one output shard per input)."""
    from torchseq.tools.pretokenize import pretokenize

    out = CACHE / f"pretokenized-{_digest([*shards, TOKENIZER], MAX_LENGTH)}"
    if not (out / "index.json").exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        per_shard = sum(1 for _ in gzip.open(shards[0], "rb"))
        pretokenize(shards, TOKENIZER, MAX_LENGTH, out, shard_size=per_shard, progress=False)
    return str(out)


def masked_rows(batch: dict[str, Any]) -> list[Row]:
    """(anchor ids, positive ids) per row of a padded batch, padding removed via the mask."""
    columns = []
    for name in ("anchor", "positive"):
        ids = batch[name]["input_ids"].tolist()
        lengths = batch[name]["attention_mask"].sum(1).tolist()
        columns.append([tuple(row[:n]) for row, n in zip(ids, lengths, strict=True)])
    return list(zip(columns[0], columns[1], strict=True))


def compare_rows(got: Counter[Row], expected: Counter[Row]) -> dict[str, int]:
    """How far a delivered multiset of rows is from the reference (all zero = identical)."""
    missing = expected - got
    extra = got - expected
    return {
        "delivered": sum(got.values()),
        "expected": sum(expected.values()),
        "missing": sum(missing.values()),
        "unexpected": sum(extra.values()),
    }

"""Store once, load back fast: WebDataset shards of token ids plus an index.

:func:`pretokenize` reads pair shards (JSONL or WebDataset), tokenizes them
with the same encoder as :meth:`Pipeline.tokenize` (so the ids are identical),
and writes ``webdataset.ShardWriter`` shards whose samples hold one ``.npy``
member per text field::

    000000042.anchor.npy      uint16 ids (int32 when the vocabulary exceeds 65,536)
    000000042.positive.npy
    000000042.negatives.0.npy, 000000042.negatives.1.npy, ...   (hard negatives, if any)
    000000042.json            extra fields such as guid / dataset (only if present)

``index.json`` beside the shards (the manifest, :mod:`torchseq.sources.manifest`) holds the record count of
every shard, token counts and longest lengths per field, a length histogram per
field, and the tokenizer facts a reader needs (``pad_id``, ``max_length``,
``vocab_size``, the tokenizer file's SHA-256). ``ts.read_webdataset(DIR)``
reads the shards listed there and takes ``pad_id`` from it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from torchseq.errors import ConfigError
from torchseq.pipeline import Pipeline
from torchseq.records import TEXT_FIELDS, Record
from torchseq.sources import expand_spec, reader_for
from torchseq.sources.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION
from torchseq.sources.npy import npy_bytes
from torchseq.stages import Tokenize

SHARD_PATTERN = "shard-%05d.tar"
# Extra record fields kept in KEY.json (texts are not stored: ids only).
_SKIP_FIELDS = frozenset(TEXT_FIELDS) | {"tokens", "__key__"}


def ids_dtype(vocab_size: int) -> np.dtype[Any]:
    """The most compact dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


class _ShardStats:
    def __init__(self, path: str, max_length: int) -> None:
        self.path = path
        self.count = 0
        self.tokens: dict[str, int] = {}
        self.longest: dict[str, int] = {}
        self.max_length = max_length

    def add(self, name: str, length: int) -> None:
        self.tokens[name] = self.tokens.get(name, 0) + length
        self.longest[name] = max(self.longest.get(name, 0), length)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "count": self.count, "tokens": self.tokens, "max_length": self.longest}


def _sample(key: str, record: Record, dtype: np.dtype[Any]) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": key}
    for name, ids in record["tokens"].items():
        if name == "negatives":
            for k, negative in enumerate(ids):
                sample[f"negatives.{k}.npy"] = npy_bytes(np.asarray(negative, dtype=dtype))
        else:
            sample[f"{name}.npy"] = npy_bytes(np.asarray(ids, dtype=dtype))
    extra = {k: v for k, v in record.items() if k not in _SKIP_FIELDS}
    if extra:
        sample["json"] = json.dumps(extra).encode("utf-8")
    return sample


def write_shards(
    records: Iterable[Record],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    tokenizer_sha256: str | None = None,
    shard_size: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write tokenized records (``record["tokens"]``) as shards plus ``index.json``; returns the index."""
    import webdataset

    if shard_size < 1:
        raise ConfigError(f"pretokenize: shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("shard-*.tar")) or (out / MANIFEST_NAME).exists():
        raise ConfigError(f"{out}: already holds pre-tokenized shards; choose an empty directory")
    dtype = ids_dtype(vocab_size)
    histograms: dict[str, list[int]] = {}
    shards: list[_ShardStats] = []
    # Members are encoded here (npy_bytes: np.save's bytes, header cached), so
    # TarWriter's per-member encoder lookup is skipped. An integer mtime keeps
    # tarfile from adding a pax header (1 KiB) to every member.
    writer = webdataset.ShardWriter(
        str(out / SHARD_PATTERN), maxcount=shard_size, verbose=0, mtime=0, encoder=False
    )
    total = 0
    try:
        for record in records:
            writer.write(_sample(f"{total:09d}", record, dtype))
            name = Path(str(writer.fname)).name
            if not shards or shards[-1].path != name:
                shards.append(_ShardStats(name, max_length))
            stats = shards[-1]
            stats.count += 1
            for field, ids in record["tokens"].items():
                for seq in ids if field == "negatives" else [ids]:
                    length = len(seq)
                    stats.add(field, length)
                    histogram = histograms.setdefault(field, [0] * (max_length + 1))
                    histogram[min(length, max_length)] += 1
            total += 1
            if progress is not None:
                progress(1)
    finally:
        writer.close()
    if total == 0:
        # ShardWriter opened an empty first shard; an index with no shards is clearer.
        for leftover in out.glob("shard-*.tar"):
            leftover.unlink()
    index = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "num_records": total,
        "dtype": dtype.str,
        "tokenizer": {
            "sha256": tokenizer_sha256,
            "max_length": max_length,
            "pad_id": pad_id,
            "vocab_size": vocab_size,
        },
        "length_histogram": histograms,
        "shards": [s.as_dict() for s in shards],
    }
    (out / MANIFEST_NAME).write_text(json.dumps(index, indent=1) + "\n")
    return index


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretokenize(
    spec: Any,
    tokenizer: str | os.PathLike[str],
    max_length: int,
    out_dir: str | os.PathLike[str],
    *,
    fields: Mapping[str, str] | None = None,
    on_error: str = "raise",
    shard_size: int = 10_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize pair shards once and store the ids as WebDataset shards plus ``index.json``.

    Args:
        spec: input shards (``.jsonl[.gz|.zst]`` or ``.tar[.gz]``), as for the readers.
        tokenizer: a ``tokenizer.json`` path.
        max_length: truncate every text to this many tokens (special tokens included).
        out_dir: an empty or new directory for ``shard-NNNNN.tar`` and ``index.json``.
        fields, on_error: as for :func:`~torchseq.read_jsonl`.
        shard_size: records per output shard.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The index written to ``out_dir/index.json``.
    """
    import tokenizers

    path = os.fspath(tokenizer)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: tokenizer file not found")
    shards = expand_spec(spec)
    source = reader_for(shards).create(shards, fields=fields, on_error=on_error)
    stage = Tokenize(path, max_length, chunk_size=512)
    pipe = Pipeline(source, (stage,))
    tok = tokenizers.Tokenizer.from_file(path)
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit=" pairs", desc="pretokenize", mininterval=1.0)
    try:
        return write_shards(
            pipe,
            out_dir,
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
            pad_id=stage.resolved_pad_id(),
            max_length=max_length,
            tokenizer_sha256=_sha256(path),
            shard_size=shard_size,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()

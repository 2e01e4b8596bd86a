"""Store once, load back fast: WebDataset shards of token ids plus an index.

:func:`pretokenize` reads pair shards (JSONL or WebDataset), tokenizes them
with the same encoder as :meth:`Pipeline.tokenize` (so the ids are identical),
and writes WebDataset shards (``webdataset.TarWriter``) whose samples hold one ``.npy``
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

Nothing that looks complete is left by a run that fails: every file is
written under a temporary name (:mod:`torchseq.tools.output`), and only when
all shards are done are they renamed into place, ``index.json`` last. A later
run removes the temporaries a killed run left. A directory that already holds
output is refused unless ``overwrite``; then the old output stays whole and
readable until the new one is complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from torchseq.errors import ConfigError
from torchseq.pipeline import Pipeline
from torchseq.records import TEXT_FIELDS, Record
from torchseq.sources import expand_spec, reader_for
from torchseq.sources.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, read_manifest
from torchseq.sources.npy import npy_bytes
from torchseq.stages import Tokenize
from torchseq.tools.output import cannot_write, open_temporary, remove_stale

SHARD_PATTERN = "shard-%05d.tar"
SHARD_GLOB = "shard-*.tar"
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


def prepare_output(out: str, overwrite: bool) -> bool:
    """Check ``out`` before anything is written; remove a killed run's temporaries.

    Returns:
        Whether ``out`` was created here (a failed run removes it again).

    Raises:
        ConfigError: ``out`` is a file, another run is writing into it, or it
            holds output and ``overwrite`` is not set.
        OSError: ``out`` cannot be created.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"{out}: is a file; --out names a directory for the shards and {MANIFEST_NAME}")
    if not os.path.exists(out):
        try:
            os.makedirs(out)
        except OSError as exc:
            raise cannot_write(out, exc) from None
        return True
    live = [found for name in (SHARD_GLOB, MANIFEST_NAME) for found in remove_stale(out, name)]
    if live:
        path, pid = live[0]
        raise ConfigError(f"{out}: another pretokenize (process {pid}) is writing here; wait for it to "
                          f"finish or stop it, or choose another directory (if process {pid} is no "
                          f"pretokenize, remove {path})")
    shards = glob.glob(os.path.join(glob.escape(out), SHARD_GLOB))
    if os.path.exists(os.path.join(out, MANIFEST_NAME)):
        try:
            read_manifest(out)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{exc}; torchseq replaces only its own output: choose another directory") from None
        if not overwrite:
            raise ConfigError(f"{out}: already holds pre-tokenized shards ({MANIFEST_NAME} and {len(shards)} "
                              "shard(s)); pass --overwrite (overwrite=True) to replace them, or choose "
                              "another directory")
    elif shards and not overwrite:
        raise ConfigError(f"{out}: holds {len(shards)} shard-*.tar file(s) but no {MANIFEST_NAME}, the output "
                          "of an interrupted run; pass --overwrite (overwrite=True) to replace them, or "
                          "choose another directory")
    return False


class _Shard:
    """One output shard being written: its temporary, its final name, its statistics."""

    def __init__(self, path: str, max_length: int) -> None:
        import webdataset

        self.path = path
        self.stats = _ShardStats(os.path.basename(path), max_length)
        self.tmp, self._raw = open_temporary(path)
        # Members are encoded here (npy_bytes: np.save's bytes, header cached), so
        # TarWriter's per-member encoder lookup is skipped. An integer mtime keeps
        # tarfile from adding a pax header (1 KiB) to every member.
        self._tar: Any = webdataset.TarWriter(self._raw, encoder=False, compress=False, mtime=0)

    def write(self, sample: dict[str, Any]) -> None:
        self._tar.write(sample)

    def close(self) -> None:
        for handle in (self._tar, self._raw):
            handle.close()


def write_shards(
    records: Iterable[Record],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int,
    pad_id: int,
    max_length: int,
    tokenizer_sha256: str | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write tokenized records (``record["tokens"]``) as shards plus ``index.json``; returns the index.

    Raises:
        ConfigError: see :func:`prepare_output`.
    """
    if shard_size < 1:
        raise ConfigError(f"pretokenize: shard_size must be >= 1, got {shard_size}")
    out = os.fspath(out_dir)
    created = prepare_output(out, overwrite)
    dtype = ids_dtype(vocab_size)
    histograms: dict[str, list[int]] = {}
    shards: list[_Shard] = []
    temporaries: list[str] = []
    total = 0
    try:
        for record in records:
            if total % shard_size == 0:
                if shards:
                    shards[-1].close()
                shards.append(_Shard(os.path.join(out, SHARD_PATTERN % len(shards)), max_length))
                temporaries.append(shards[-1].tmp)
            shard = shards[-1]
            shard.write(_sample(f"{total:09d}", record, dtype))
            stats = shard.stats
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
        if shards:
            shards[-1].close()
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
            "shards": [s.stats.as_dict() for s in shards],
        }
        manifest = os.path.join(out, MANIFEST_NAME)
        tmp, handle = open_temporary(manifest)
        temporaries.append(tmp)
        with handle:
            handle.write((json.dumps(index, indent=1) + "\n").encode())
        _commit(out, [(s.tmp, s.path) for s in shards], (tmp, manifest))
    except BaseException:
        _discard(shards, temporaries, out if created else None)
        raise
    return index


def _commit(out: str, shards: list[tuple[str, str]], manifest: tuple[str, str]) -> None:
    """Rename the finished temporaries into place, the manifest last.

    An old manifest goes first: until the new one lands, the directory is
    marked unfinished (a run killed in between is refused without
    ``overwrite``), never a new manifest over old shards or the reverse.
    """
    if os.path.exists(manifest[1]):
        os.remove(manifest[1])
    for tmp, path in shards:
        os.replace(tmp, path)
    kept = {path for _, path in shards}
    for old in glob.glob(os.path.join(glob.escape(out), SHARD_GLOB)):
        if old not in kept:
            os.remove(old)
    os.replace(*manifest)


def _discard(shards: list[_Shard], temporaries: list[str], created: str | None) -> None:
    """After a failure: close and remove every temporary, and the directory if this run made it."""
    for shard in shards:
        try:
            shard.close()
        except Exception:  # already failing; the file is removed below
            pass
    for tmp in temporaries:
        if os.path.exists(tmp):
            os.remove(tmp)
    if created is not None:
        try:
            os.rmdir(created)
        except OSError:  # something else was put there meanwhile: leave it
            pass


def load_tokenizer(tokenizer: str | os.PathLike[str]) -> Any:
    """``tokenizers.Tokenizer.from_file``, with errors that name the file.

    Raises:
        ConfigError: the file does not exist or is not a ``tokenizer.json``.
    """
    import tokenizers

    path = os.fspath(tokenizer)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory; give the tokenizer.json file, e.g. "
                          f"{os.path.join(path, 'tokenizer.json')}")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: tokenizer file not found")
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception for any file it cannot parse
        raise ConfigError(f"{path}: not a tokenizer.json file ({exc}); give the tokenizer.json that "
                          "tokenizers (or a transformers fast tokenizer's save_pretrained) writes") from None


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
    reader: str = "auto",
    fields: Mapping[str, str] | None = None,
    on_error: str = "raise",
    storage_options: Mapping[str, Any] | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize pair shards once and store the ids as WebDataset shards plus ``index.json``.

    Args:
        spec: input shards (JSON Lines or WebDataset tar), as for the readers.
        tokenizer: a ``tokenizer.json`` path.
        max_length: truncate every text to this many tokens (special tokens included).
        out_dir: the directory for ``shard-NNNNN.tar`` and ``index.json``: new,
            or without earlier output unless ``overwrite``.
        reader: ``"auto"``, ``"jsonl"`` or ``"webdataset"``, as for
            :func:`~torchseq.sources.reader_for`.
        fields, on_error, storage_options: as for :func:`~torchseq.read_jsonl`.
        shard_size: records per output shard.
        overwrite: replace the output of an earlier run in ``out_dir``.
        progress: show a tqdm progress bar on stderr.

    Returns:
        The index written to ``out_dir/index.json``.

    Raises:
        ConfigError: a bad tokenizer file or output directory (see :func:`prepare_output`).
        DataError: bad input under ``on_error="raise"``; nothing is left in ``out_dir``.
    """
    path = os.fspath(tokenizer)
    tok = load_tokenizer(path)
    shards = expand_spec(spec, storage_options)
    source = reader_for(shards, reader).create(
        shards, fields=fields, on_error=on_error, storage_options=storage_options)
    stage = Tokenize(path, max_length, chunk_size=512)
    pipe = Pipeline(source, (stage,))
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
            overwrite=overwrite,
            progress=bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()

"""Tokenization inside the DataLoader workers.

The tokenizer is described by something picklable (a ``tokenizer.json`` path,
a ``tokenizers.Tokenizer``, a ``transformers`` fast tokenizer, or a callable)
and built once per process. The pipeline builds it when ``tokenize()`` is
called, in the main process, which also checks the tokenizer early; forked
DataLoader workers inherit that build instead of loading the tokenizer again
at every epoch (spawned workers build their own the first time they need it).

Rust-side parallelism of ``tokenizers`` is turned off (``TOKENIZERS_PARALLELISM
=false``, unless the user set the variable) before the first encode: the
parallel unit here is the DataLoader worker, and a thread pool used before a
fork is what makes ``tokenizers`` warn (or hang) in every forked worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import ConfigError, StateError
from torchseq.protocol import Running
from torchseq.records import TEXT_FIELDS, Record
from torchseq.stages.encoder import FastEncoder
from torchseq.stages.fingerprint import tokenizer_identity
from torchseq.state import Saved, SnapshotEncoder, State, show

Encoder = Callable[[list[str]], list[list[int]]]

_CACHE: dict[tuple[Any, int, int | None], tuple[Any, Encoder, int]] = {}


def _lazy_tokenizers() -> Any:
    import tokenizers

    return tokenizers


def _is_transformers_fast(obj: Any) -> bool:
    return hasattr(obj, "backend_tokenizer") and hasattr(obj, "pad_token_id")


def _pad_id_of(tok: Any) -> int:
    padding = tok.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|padding|>"):
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _rust_encoder(tok: Any, max_length: int) -> Encoder:
    # Ids identical to tok.encode(text).ids with truncation, with the work
    # nobody uses (offsets, overflow, whole documents) cut; see torchseq.stages.encoder.
    return FastEncoder(tok, max_length)


def _build(spec: Any, max_length: int, pad_id: int | None) -> tuple[Encoder, int]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizers = _lazy_tokenizers()
    if isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        if not os.path.exists(path):
            raise ConfigError(f"{path}: tokenizer file not found")
        tok = tokenizers.Tokenizer.from_file(path)
    elif isinstance(spec, tokenizers.Tokenizer):
        tok = tokenizers.Tokenizer.from_str(spec.to_str())
    elif _is_transformers_fast(spec):
        tok = tokenizers.Tokenizer.from_str(spec.backend_tokenizer.to_str())
        if pad_id is None and spec.pad_token_id is not None:
            pad_id = int(spec.pad_token_id)
    elif callable(spec):
        return spec, (0 if pad_id is None else pad_id)
    else:
        raise ConfigError(
            "tokenize: expected a tokenizer.json path, a tokenizers.Tokenizer, a transformers "
            f"fast tokenizer or a callable, got {type(spec).__name__}"
        )
    return _rust_encoder(tok, max_length), (_pad_id_of(tok) if pad_id is None else pad_id)


def load_encoder(spec: Any, max_length: int, pad_id: int | None = None) -> tuple[Encoder, int]:
    """The encoder and pad id for ``spec``, built once per process (a forked child inherits it)."""
    key_obj = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else id(spec)
    key = (key_obj, max_length, pad_id)
    cached = _CACHE.get(key)
    if cached is None:
        encoder, resolved_pad = _build(spec, max_length, pad_id)
        # Holding ``spec`` keeps its id from being reused while the entry lives.
        cached = _CACHE[key] = (spec, encoder, resolved_pad)
    return cached[1], cached[2]


def _strip_tokens(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != "tokens"}


@dataclass(frozen=True)
class Tokenize:
    """Add ``record["tokens"] = {field: ids}`` for the text fields, in chunks.

    ``ids`` are the tokenizer's own truncated encoding (special tokens
    included, no padding). ``negatives`` becomes a list of id lists.

    State: ``pending`` -- records pulled from upstream but not yet yielded,
    stored untokenized (they are re-tokenized on resume; nothing delivered is).
    Settings checked on resume: the tokenizer's digest
    (:func:`~torchseq.stages.fingerprint.tokenizer_identity`),
    ``max_length``, ``fields``, ``pad_id``.
    """

    tokenizer: Any
    max_length: int = 128
    fields: tuple[str, ...] = TEXT_FIELDS
    chunk_size: int = 64
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ConfigError(f"tokenize: max_length must be >= 1, got {self.max_length}")
        if self.chunk_size < 1:
            raise ConfigError(f"tokenize: chunk_size must be >= 1, got {self.chunk_size}")
        # Build now, in the process that describes the pipeline: a bad tokenizer
        # fails here, and forked workers start with the encoder ready.
        load_encoder(self.tokenizer, self.max_length, self.pad_id)

    def resolved_pad_id(self) -> int:
        return load_encoder(self.tokenizer, self.max_length, self.pad_id)[1]

    def settings(self) -> dict[str, Any]:
        return {"tokenizer": tokenizer_identity(self.tokenizer), "max_length": self.max_length,
                "fields": list(self.fields), "pad_id": self.pad_id}

    def open(self, upstream: Iterator[Record], ctx: Context, state: State) -> Running:
        return _Tokenizing(self, upstream, state)

    def _encode_chunk(self, chunk: list[Record], encode: Encoder) -> list[Record]:
        out = [dict(r) for r in chunk]
        for r in out:
            r["tokens"] = dict(r["tokens"]) if "tokens" in r else {}
        for name in self.fields:
            if name == "negatives":
                owners = [r for r in out if "negatives" in r]
                flat = [text for r in owners for text in r["negatives"]]
                if not flat:
                    continue
                ids = encode(flat)
                start = 0
                for r in owners:
                    count = len(r["negatives"])
                    r["tokens"]["negatives"] = ids[start : start + count]
                    start += count
                continue
            owners = [r for r in out if name in r]
            if owners:
                for r, seq in zip(owners, encode([r[name] for r in owners]), strict=True):
                    r["tokens"][name] = seq
        return out


class _Tokenizing(Running):
    """State: the records of the current chunk not yet yielded (``chunk[position:]``)."""

    __slots__ = ("chunk", "position", "encoder")

    def __init__(self, stage: Tokenize, upstream: Iterator[Record], state: State) -> None:
        self.chunk: list[Record] = []
        self.position = 0
        self.encoder = SnapshotEncoder()
        pending: list[Record] = []
        if state:
            pending = Saved(state).records("pending")
            for index, record in enumerate(pending):
                if type(record) is not dict:
                    raise StateError(f"pending: record {index} is {show(record)}, pipeline needs a dict")
        self.iterator = self._tokenize(stage, upstream, pending)

    def state_dict(self) -> State:
        return {"pending": self.encoder(_strip_tokens(r) for r in self.chunk[self.position :])}

    def _tokenize(self, stage: Tokenize, upstream: Iterator[Record], pending: list[Record]) -> Iterator[Record]:
        encode, _ = load_encoder(stage.tokenizer, stage.max_length, stage.pad_id)
        size = stage.chunk_size
        source = iter(upstream)
        carry = pending
        while True:
            chunk = carry
            carry = []
            for record in source:
                chunk.append(record)
                if len(chunk) >= size:
                    break
            if not chunk:
                return
            chunk = stage._encode_chunk(chunk, encode)
            self.chunk = chunk
            for position in range(len(chunk)):
                self.position = position + 1
                yield chunk[position]
            self.chunk, self.position = [], 0


def tokenizer_spec(tokenizer: Any) -> Any:
    """Validate early (in the main process) what can be checked without loading."""
    if isinstance(tokenizer, (str, os.PathLike)) and not os.path.exists(os.fspath(tokenizer)):
        raise ConfigError(f"{os.fspath(tokenizer)}: tokenizer file not found")
    return tokenizer


def encode_reference(tokenizer_file: str, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """The tokenizer's own truncated encoding, one text at a time (for tests and benchmarks)."""
    tok = _lazy_tokenizers().Tokenizer.from_file(tokenizer_file)
    tok.enable_truncation(max_length)
    return [tok.encode(t).ids for t in texts]

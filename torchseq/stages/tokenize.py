"""Tokenization inside the DataLoader workers.

The tokenizer is described by something picklable (a ``tokenizer.json`` path,
a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer, fast or slow, or a
callable) and built once per process. The pipeline builds it when ``tokenize()`` is
called, in the main process, which also checks the tokenizer early; forked
DataLoader workers inherit that build instead of loading the tokenizer again
at every epoch (spawned workers build their own the first time they need it).

Rust-side parallelism of ``tokenizers`` is turned off (``TOKENIZERS_PARALLELISM
=false``, unless the user set the variable) before the first encode: the
parallel unit here is the DataLoader worker, and a thread pool used before a
fork is what makes ``tokenizers`` warn (or hang) in every forked worker.

``max_length`` holds for every kind. Fast tokenizers truncate themselves (the
post-processor's special tokens kept); a slow ``transformers`` tokenizer is
called with ``truncation=True, max_length=``. A callable is not trusted: its
output is checked (one sequence of ids per text), and a row longer than
``max_length`` is cut to its first ``max_length`` ids -- counted as
``tokenize.truncated`` in ``Pipeline.stats().counters``; a callable that wants
an end token kept must truncate itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import ConfigError, StateError
from torchseq.protocol import Counters, Running
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


def _is_transformers(obj: Any) -> bool:
    """A ``transformers`` tokenizer of any kind (a slow one has no ``backend_tokenizer``)."""
    return hasattr(obj, "pad_token_id") and hasattr(obj, "model_max_length") and callable(obj)


class TransformersEncoder:
    """A slow (pure-Python) ``transformers`` tokenizer, through its own ``__call__`` with truncation.

    The ids are what ``tokenizer(texts, truncation=True, max_length=max_length)``
    gives -- those of the fast tokenizer on the same vocabulary.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)
        ids: list[list[int]] = encoded["input_ids"]
        return ids


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} rows"
    return f"a {type(value).__name__}"


def _not_ids(problem: str, texts: list[str]) -> ConfigError:
    return ConfigError(
        f"tokenize: the tokenizer returned {problem} for {len(texts)} texts; a callable must return "
        "one list of token ids per text (for a transformers tokenizer, pass the tokenizer itself)"
    )


def checked_rows(rows: Any, texts: list[str], max_length: int) -> tuple[list[Any], int]:
    """A callable's output for ``texts``, rows cut to ``max_length``, and how many were cut.

    Raises:
        ConfigError: not one sequence of ids per text (a dict such as a
            ``BatchEncoding``, a string, fewer or more rows).
    """
    if not isinstance(rows, (list, tuple)) or len(rows) != len(texts):
        raise _not_ids(_describe(rows), texts)
    out = list(rows)
    cut = 0
    for i, row in enumerate(out):
        if type(row) is not list and (isinstance(row, (str, bytes, Mapping)) or not hasattr(row, "__len__")):
            raise _not_ids(f"a row of type {type(row).__name__}", texts)
        if len(row) > max_length:
            out[i] = row[:max_length]
            cut += 1
    return out, cut


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
    elif _is_transformers(spec):
        if pad_id is None:
            pad_id = int(spec.pad_token_id) if spec.pad_token_id is not None else 0
        return TransformersEncoder(spec, max_length), pad_id
    elif callable(spec):
        return spec, (0 if pad_id is None else pad_id)
    else:
        raise ConfigError(
            "tokenize: expected a tokenizer.json path, a tokenizers.Tokenizer, a transformers "
            f"tokenizer or a callable, got {type(spec).__name__}"
        )
    return _rust_encoder(tok, max_length), (_pad_id_of(tok) if pad_id is None else pad_id)


def truncates(encoder: Encoder) -> bool:
    """Whether ``encoder`` keeps ``max_length`` itself (else its rows are checked and cut)."""
    return isinstance(encoder, (FastEncoder, TransformersEncoder))


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
    included, no padding). ``negatives`` becomes a list of id lists. A
    callable's rows are checked and cut to ``max_length`` (counted as
    ``tokenize.truncated``).

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
        """The chunk's records with their tokens (``encode`` already checked and cut, if it must be)."""
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
    """State: the records of the current chunk not yet yielded (``chunk[position:]``).

    Counts ``tokenize.truncated`` (rows a callable returned longer than ``max_length``).
    """

    __slots__ = ("chunk", "position", "encoder", "truncated")

    def __init__(self, stage: Tokenize, upstream: Iterator[Record], state: State) -> None:
        self.chunk: list[Record] = []
        self.position = 0
        self.truncated: int | None = None  # counted for callables only
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

    def counters(self) -> Counters:
        return {} if self.truncated is None else {"tokenize.truncated": self.truncated}

    def _checked(self, encode: Encoder, max_length: int) -> Encoder:
        """``encode`` with its rows checked and cut to ``max_length``, counting the cuts."""
        self.truncated = 0

        def checked(texts: list[str]) -> list[list[int]]:
            rows, cut = checked_rows(encode(texts), texts, max_length)
            self.truncated = (self.truncated or 0) + cut
            return rows

        return checked

    def _tokenize(self, stage: Tokenize, upstream: Iterator[Record], pending: list[Record]) -> Iterator[Record]:
        encode, _ = load_encoder(stage.tokenizer, stage.max_length, stage.pad_id)
        if not truncates(encode):
            encode = self._checked(encode, stage.max_length)
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

"""What a checkpoint records of a tokenizer: a digest of its definition (:func:`tokenizer_identity`).

Resuming with another tokenizer would mix two encodings in one epoch; the
digest in ``Tokenize.settings()`` makes that a :class:`~torchseq.errors.StateError`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

_DIGESTS: dict[Any, tuple[Any, str]] = {}


def _digest(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return "blake2b:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def tokenizer_identity(tokenizer: Any) -> str:
    """A digest of the tokenizer's definition, computed once per process and tokenizer.

    A ``tokenizer.json`` path: its bytes (again when its size or mtime change);
    a ``tokenizers.Tokenizer`` or a ``transformers`` fast tokenizer: its
    serialization; a callable: its qualified name (its code cannot be compared).
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        path = os.fspath(tokenizer)
        stat = os.stat(path)
        key: Any = (path, stat.st_size, stat.st_mtime_ns)
    else:
        key = id(tokenizer)
    cached = _DIGESTS.get(key)
    if cached is None:
        # Holding ``tokenizer`` keeps its id from being reused while the entry lives.
        cached = _DIGESTS[key] = (tokenizer, _identity(tokenizer))
    return cached[1]


def _identity(tokenizer: Any) -> str:
    if isinstance(tokenizer, (str, os.PathLike)):
        with open(os.fspath(tokenizer), "rb") as f:
            return f"tokenizer.json {_digest(f.read())}"
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a transformers fast tokenizer's
    to_str = getattr(backend, "to_str", None)  # a tokenizers.Tokenizer
    if callable(to_str):
        return f"{type(tokenizer).__name__} {_digest(to_str())}"
    named = tokenizer if hasattr(tokenizer, "__qualname__") else type(tokenizer)
    return f"callable {getattr(named, '__module__', '?')}.{named.__qualname__}"

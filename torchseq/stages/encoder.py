"""Ids-only encoding that returns exactly ``tokenizer.encode(text).ids`` with less work.

A ``tokenizers.Tokenizer`` with truncation keeps ``max_length`` tokens, yet it
normalizes, splits and tokenizes the whole document, tracks offsets and builds
an overflow ``Encoding`` for every ``max_length`` tokens cut off. Two shortcuts
remove most of that work while keeping the ids identical; each applies only to
tokenizers whose components are known to make it exact, and is checked again
on every text it is used for:

* **Pre-truncation.** A long text is cut before a space, far enough out that the
  kept prefix still yields at least ``max_length`` tokens. With a normalizer
  that works character by character and a pre-tokenizer that splits at
  whitespace, the prefix tokenizes to a prefix of the full text's tokens, so
  the truncated ids are the same -- *provided* the prefix produced enough
  tokens. That is checked (the truncated encoding has ``max_length`` ids); a
  text that falls short is encoded again in full.
* **ASCII normalization in Python.** For normalizers that map each ASCII
  character on its own (BERT's clean-up and lowercasing), an ASCII text is
  normalized with ``str.translate`` (a table probed from the tokenizer's own
  normalizer at build time) and encoded by a copy of the tokenizer without
  the normalizer, which skips the alignment bookkeeping of normalization.
  Texts containing an added token's content (``[SEP]``...) go the full way,
  because added tokens are matched before normalization.

``encode_batch_fast`` (no offsets) is used where the installed ``tokenizers``
has it. Measured on the debian-pairs dev corpus in ``benchmarks/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Character budget per kept token before a text is pre-truncated. Generous on
# purpose: the prefix must still produce max_length tokens (checked; the rare
# text that does not is encoded in full). English prose averages ~5 characters
# per WordPiece token; 8 gave no fallback on the dev corpus.
CHARS_PER_TOKEN = 8

# Components that work per character (normalizers) or split at every
# whitespace and then work per word (pre-tokenizers, models). Anything else
# (Replace, Precompiled, Strip, ByteLevel, Metaspace, Split with a pattern...)
# turns the shortcut off.
_LOCAL_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
_WHITESPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
_WORD_SPLITTERS = _WHITESPACE_SPLITTERS | {"Punctuation", "Digits"}
_WORD_MODELS = frozenset({"WordPiece", "BPE", "WordLevel", "Unigram"})


def _members(component: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if component is None:
        return []
    if component.get("type") == "Sequence":
        return list(component.get(key, []))
    return [component]


def _normalizer_is_local(config: dict[str, Any]) -> bool:
    return all(n.get("type") in _LOCAL_NORMALIZERS for n in _members(config.get("normalizer"), "normalizers"))


def _splits_at_whitespace(config: dict[str, Any]) -> bool:
    members = _members(config.get("pre_tokenizer"), "pretokenizers")
    types = {m.get("type") for m in members}
    return bool(types & _WHITESPACE_SPLITTERS) and types <= _WORD_SPLITTERS


def _added_contents(config: dict[str, Any]) -> list[str]:
    return [t["content"] for t in config.get("added_tokens", [])]


def _ascii_table(tok: Any) -> dict[int, str] | None:
    """``str.translate`` table equal to the normalizer on ASCII text, or None if there is none."""
    normalizer = tok.normalizer
    if normalizer is None:
        return None
    table = {c: normalizer.normalize_str(chr(c)) for c in range(128)}
    # The probe: every ASCII character between letters, twice, plus runs.
    probe = "".join(f"a{chr(c)}B{chr(c)}{chr(c)}" for c in range(128)) + " Mixed\tCASE\r\nEnd. "
    if normalizer.normalize_str(probe) != probe.translate(table):
        return None
    return table


def prefix_before_space(text: str, limit: int) -> str | None:
    """The longest prefix of ``text`` of at most ``limit`` characters that ends
    right before a space and not in whitespace; None if there is no such cut."""
    cut = text.rfind(" ", 0, limit + 1)
    while cut > 0 and text[cut - 1].isspace():
        cut = text.rfind(" ", 0, cut)
    return text[:cut] if cut > 0 else None


class FastEncoder:
    """``encode(texts) -> [ids]`` equal to ``[tok.encode(t).ids for t in texts]`` with
    truncation at ``max_length`` (see the module docs for how and when).

    Args:
        tokenizer: a ``tokenizers.Tokenizer``; copied, never modified.
        max_length: truncate to this many ids, special tokens included.
        pretruncate: allow pre-truncation where it is exact for this tokenizer.
        ascii_normalize: allow Python-side ASCII normalization where it is exact.
    """

    def __init__(self, tokenizer: Any, max_length: int, *, pretruncate: bool = True,
                 ascii_normalize: bool = True) -> None:
        from tokenizers import Tokenizer

        text = tokenizer.to_str()
        config = json.loads(text)
        self.max_length = max_length
        self._full = Tokenizer.from_str(text)
        self._full.enable_truncation(max_length)
        self._full.no_padding()
        self._encode_full = _batch_encoder(self._full)
        added = _added_contents(config)
        word_model = (config.get("model") or {}).get("type") in _WORD_MODELS
        exact_prefix = (
            word_model
            and _normalizer_is_local(config)
            and _splits_at_whitespace(config)
            and not any(c != c.strip() or any(ch.isspace() for ch in c) for c in added)
        )
        self.cut_chars: int | None = max_length * CHARS_PER_TOKEN if pretruncate and exact_prefix else None
        self._table: dict[int, str] | None = None
        self._encode_plain: Callable[[list[str]], list[Any]] | None = None
        if ascii_normalize and _normalizer_is_local(config):
            table = _ascii_table(self._full)
            if table is not None:
                plain_config = dict(config, normalizer=None)
                plain = Tokenizer.from_str(json.dumps(plain_config))
                plain.enable_truncation(max_length)
                plain.no_padding()
                self._table = table
                self._encode_plain = _batch_encoder(plain)
        self._added = added
        # Counters for benchmarks and tests: texts cut, cuts that fell short, plain-path texts.
        self.num_cut = 0
        self.num_fallback = 0
        self.num_plain = 0

    def _route(self, text: str) -> tuple[str, bool]:
        """The text to encode and whether it goes the plain (pre-normalized) way."""
        if self._table is None or not text.isascii():
            return text, False
        normalized = text.translate(self._table)
        for content in self._added:
            if content in text or content in normalized:
                return text, False
        return normalized, True

    def __call__(self, texts: list[str]) -> list[list[int]]:
        n = len(texts)
        out: list[list[int]] = [[]] * n
        limit = self.cut_chars
        plain_at: list[int] = []
        plain_texts: list[str] = []
        full_at: list[int] = []
        full_texts: list[str] = []
        cut_at: set[int] = set()
        for i, text in enumerate(texts):
            if limit is not None and len(text) > limit:
                prefix = prefix_before_space(text, limit)
                if prefix is not None:
                    text = prefix
                    cut_at.add(i)
            routed, plain = self._route(text)
            if plain:
                plain_at.append(i)
                plain_texts.append(routed)
            else:
                full_at.append(i)
                full_texts.append(routed)
        if plain_texts:
            assert self._encode_plain is not None
            for i, encoding in zip(plain_at, self._encode_plain(plain_texts), strict=True):
                out[i] = encoding.ids
        if full_texts:
            for i, encoding in zip(full_at, self._encode_full(full_texts), strict=True):
                out[i] = encoding.ids
        if cut_at:
            max_length = self.max_length
            # A prefix that gave fewer than max_length ids proves nothing: redo in full.
            short = [i for i in cut_at if len(out[i]) < max_length]
            if short:
                for i, encoding in zip(short, self._encode_full([texts[i] for i in short]), strict=True):
                    out[i] = encoding.ids
            self.num_cut += len(cut_at)
            self.num_fallback += len(short)
        self.num_plain += len(plain_texts)
        return out


def _batch_encoder(tok: Any) -> Callable[[list[str]], list[Any]]:
    encode: Callable[[list[str]], list[Any]] = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return encode

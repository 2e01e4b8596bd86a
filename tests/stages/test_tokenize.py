"""Tokenize stage and the ids-only FastEncoder: ids identical to the reference tokenization."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

import torchseq as ts
from torchseq.stages.encoder import FastEncoder, prefix_before_space
from torchseq.stages.tokenize import encode_reference


def reference(tokenizer_file: str, texts: list[str], max_length: int) -> list[list[int]]:
    return encode_reference(tokenizer_file, texts, max_length)


@functools.cache
def cached_pair(tokenizer_file: str, max_length: int) -> tuple[FastEncoder, Any]:
    """A FastEncoder and a reference tokenizer, built once per max_length (Hypothesis runs many)."""
    tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    ref = tokenizers.Tokenizer.from_file(tokenizer_file)
    ref.enable_truncation(max_length)
    return FastEncoder(tok, max_length), ref


@pytest.fixture(scope="module")
def sample_records(sample_files: list[str]) -> list[dict[str, Any]]:
    return list(ts.read_jsonl(sample_files))


@pytest.mark.parametrize("max_length", [16, 64, 128])
def test_pipeline_ids_equal_reference_on_every_sample_record(
    sample_files: list[str], tokenizer_file: str, sample_records: list[dict[str, Any]], max_length: int
) -> None:
    records = list(ts.read_jsonl(sample_files).tokenize(tokenizer_file, max_length=max_length))
    assert len(records) == len(sample_records) == 4000
    anchors = reference(tokenizer_file, [r["anchor"] for r in sample_records], max_length)
    positives = reference(tokenizer_file, [r["positive"] for r in sample_records], max_length)
    assert [r["tokens"]["anchor"] for r in records] == anchors
    assert [r["tokens"]["positive"] for r in records] == positives


@pytest.mark.parametrize("max_length", [16, 128])
def test_every_shortcut_is_used_on_the_sample_and_keeps_ids(
    tokenizer_file: str, sample_records: list[dict[str, Any]], max_length: int
) -> None:
    texts = [r[k] for r in sample_records for k in ("anchor", "positive")]
    tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    encoder = FastEncoder(tok, max_length)
    got = [ids for start in range(0, len(texts), 64) for ids in encoder(texts[start : start + 64])]
    assert got == reference(tokenizer_file, texts, max_length)
    # The test proves something only if the shortcuts actually ran.
    assert encoder.num_cut > 0
    assert encoder.num_plain > len(texts) * 0.9


def test_short_prefix_falls_back_to_the_full_text(tokenizer_file: str) -> None:
    # Words over 100 characters are one [UNK] each: a prefix of 8 chars/token
    # holds far fewer than max_length tokens, so the cut must be undone.
    long_words = " ".join("x" * 120 + str(i) for i in range(40))
    texts = [long_words, "short text", long_words + " tail words here"]
    tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    encoder = FastEncoder(tok, 32)
    assert encoder(texts) == reference(tokenizer_file, texts, 32)
    assert encoder.num_cut == 2
    assert encoder.num_fallback == 2


TRICKY = [
    "Hello [SEP] World [CLS]",
    "lower [sep] and [Mask] and [MASK]",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds\x00nul\x7fdel\x1fus",
    "Ünïcödé àccents, 中文字符 mixed with ASCII",
    "emoji 🙂 and \ufffd replacement and \u00a0nbsp and \u2003em space",
    "  leading and trailing spaces   ",
    "a" * 300,
    "word " * 200,
    "UPPER CASE " * 100 + "[SEP]" + " end" * 100,
    "punctuation!!! (parens) [brackets] {braces} 'quotes' \"double\" a.b.c 1,234.5",
]


@pytest.mark.parametrize("max_length", [4, 8, 32, 128])
def test_tricky_texts_keep_reference_ids(tokenizer_file: str, max_length: int) -> None:
    tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    assert FastEncoder(tok, max_length)(TRICKY) == reference(tokenizer_file, TRICKY, max_length)


_ALPHABET = st.sampled_from(
    list("aAbBzZ09 .,;:!?'\"()[]#-_/\\") + ["  ", "\t", "\n", "\r", "\x00", "\x07", "\x7f", "\x0b"]
    + ["é", "Ç", "ß", "中", "🙂", "\u00a0", "\ufffd", "[SEP]", "[sep]", "[CLS]", "[MASK]", "##"]
    + ["supercalifragilisticexpialidocious" * 4, "debian ", "package "]
)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(st.lists(_ALPHABET, max_size=60).map("".join), min_size=1, max_size=6),
    max_length=st.sampled_from([3, 4, 6, 10, 24]),
)
def test_random_texts_keep_reference_ids(tokenizer_file: str, texts: list[str], max_length: int) -> None:
    encoder, ref = cached_pair(tokenizer_file, max_length)
    assert encoder(texts) == [ref.encode(t).ids for t in texts]


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc def ghi", 9, "abc def"),
        ("abc def ghi", 7, "abc def"),
        ("abc def ghi", 6, "abc"),
        ("abc   def ghi", 9, "abc   def"),
        ("abc   def", 5, "abc"),
        ("abcdef ghi", 3, None),
        (" abc", 3, None),
    ],
)
def test_prefix_before_space(text: str, limit: int, expected: str | None) -> None:
    assert prefix_before_space(text, limit) == expected


def _byte_level_tokenizer() -> Any:
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog"] * 20 + ["debian package description"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    return tok


def test_shortcuts_stay_off_where_they_would_not_be_exact(tokenizer_file: str, tmp_path: Path) -> None:
    # ByteLevel keeps spaces inside tokens: cutting before a space is not exact.
    byte_level = _byte_level_tokenizer()
    encoder = FastEncoder(byte_level, 8)
    assert encoder.cut_chars is None
    texts = ["the quick brown fox " * 30, "lazy dog"]
    path = tmp_path / "bpe.json"
    byte_level.save(str(path))
    assert encoder(texts) == reference(str(path), texts, 8)
    # A Replace normalizer is not character-local: no ASCII table, no cut.
    config = json.loads(Path(tokenizer_file).read_text())
    config["normalizer"] = {
        "type": "Sequence",
        "normalizers": [config["normalizer"], {"type": "Replace", "pattern": {"String": "ab"}, "content": "x"}],
    }
    replaced = tokenizers.Tokenizer.from_str(json.dumps(config))
    encoder = FastEncoder(replaced, 8)
    assert encoder.cut_chars is None and encoder._table is None
    texts = ["ab cd " * 50, "xab"]
    replaced.save(str(tmp_path / "replaced.json"))
    assert encoder(texts) == reference(str(tmp_path / "replaced.json"), texts, 8)


def test_transformers_tokenizer_gives_the_same_ids(tokenizer_file: str, sample_files: list[str]) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, pad_token="[PAD]")
    via_hf = list(ts.read_jsonl(sample_files[:1]).tokenize(hf, max_length=64))
    via_file = list(ts.read_jsonl(sample_files[:1]).tokenize(tokenizer_file, max_length=64))
    assert [r["tokens"] for r in via_hf] == [r["tokens"] for r in via_file]


def test_callable_tokenizer_and_negatives(make_shards: Any, tmp_path: Path) -> None:
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "neg.jsonl", [["a b", "c", "d e f", "g"], ["h", "i j"]])
    pipe = ts.read_jsonl(path).tokenize(lambda texts: [[len(t)] for t in texts], pad_id=7)
    records = list(pipe)
    assert records[0]["tokens"] == {"anchor": [3], "positive": [1], "negatives": [[5], [1]]}
    assert records[1]["tokens"] == {"anchor": [1], "positive": [3]}


def test_tokenize_resumes_exactly(sample_files: list[str], tokenizer_file: str) -> None:
    from tests.support.resume import check_resume

    def make() -> ts.Pipeline:
        pipe = ts.read_jsonl(sample_files[:2]).tokenize(tokenizer_file, max_length=32, chunk_size=48)
        return pipe.batch(100).collate()

    check_resume(make, num_workers=0, cuts=("0", "1", "mid", "end"))

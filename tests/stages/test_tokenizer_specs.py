"""Tokenization: every accepted tokenizer spec gives the tokenizer's own truncated ids."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from torch.utils.data import DataLoader

import torchseq as ts
from torchseq.stages.tokenize import encode_reference


def tokenized(pipe: ts.Pipeline, num_workers: int = 0) -> list[dict[str, Any]]:
    return [r for batch in DataLoader(pipe.batch(50), batch_size=None, num_workers=num_workers) for r in batch]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ids_equal_reference_on_the_whole_sample(
    sample_files: list[str], tokenizer_file: str, num_workers: int
) -> None:
    records = tokenized(ts.read_jsonl(sample_files).tokenize(tokenizer_file, max_length=128), num_workers)
    assert len(records) == 4000
    anchors = encode_reference(tokenizer_file, [r["anchor"] for r in records], 128)
    positives = encode_reference(tokenizer_file, [r["positive"] for r in records], 128)
    assert [r["tokens"]["anchor"] for r in records] == anchors
    assert [r["tokens"]["positive"] for r in records] == positives
    assert max(len(p) for p in positives) == 128  # truncation really happened


def specs(tokenizer_file: str) -> dict[str, Any]:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, pad_token="[PAD]", unk_token="[UNK]",
                                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    rust = tokenizers.Tokenizer.from_file(tokenizer_file)
    return {"path": tokenizer_file, "tokenizers": rust, "transformers": hf}


@pytest.mark.parametrize("kind", ["path", "tokenizers", "transformers"])
def test_every_spec_kind_gives_the_same_ids(sample_files: list[str], tokenizer_file: str, kind: str) -> None:
    spec = specs(tokenizer_file)[kind]
    records = tokenized(ts.read_jsonl(sample_files[:2]).tokenize(spec, max_length=32), num_workers=2)
    reference = encode_reference(tokenizer_file, [r["positive"] for r in records], 32)
    assert [r["tokens"]["positive"] for r in records] == reference


def test_transformers_own_call_agrees(sample_files: list[str], tokenizer_file: str) -> None:
    hf = specs(tokenizer_file)["transformers"]
    records = tokenized(ts.read_jsonl(sample_files[:1]).tokenize(hf, max_length=48))[:200]
    expected = hf([r["positive"] for r in records], truncation=True, max_length=48)["input_ids"]
    assert [r["tokens"]["positive"] for r in records] == expected


def char_codes(texts: list[str]) -> list[list[int]]:
    return [[ord(c) for c in t[:10]] for t in texts]


def test_callable_tokenizer_and_explicit_pad_id(sample_files: list[str]) -> None:
    first_anchor = next(iter(ts.read_jsonl(sample_files[:1])))["anchor"]
    batch = next(iter(ts.read_jsonl(sample_files[:1]).tokenize(char_codes, pad_id=-1).batch(4).collate()))
    row, mask = batch["anchor"]["input_ids"][0], batch["anchor"]["attention_mask"][0]
    assert row[mask.bool()].tolist() == [ord(c) for c in first_anchor[:10]]
    assert (row[~mask.bool()] == -1).all()


def test_negatives_are_tokenized(tmp_path: Any, tokenizer_file: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('["a query", "a document", "a wrong document", "another one"]\n')
    (record,) = list(ts.read_jsonl(str(path)).tokenize(tokenizer_file, 16))
    assert record["tokens"]["negatives"] == encode_reference(tokenizer_file, ["a wrong document", "another one"], 16)


FORKED = """
import tokenizers, torchseq as ts
from torch.utils.data import DataLoader
from torchseq.tools.sample import sample_shards, sample_tokenizer
tok = tokenizers.Tokenizer.from_file(sample_tokenizer())
tok.encode_batch(["warm the thread pool in the parent"] * 64)   # parallelism used before fork
pipe = ts.read_jsonl(sample_shards()).tokenize(tok, 64).batch(64).collate()
for epoch in range(2):
    n = sum(b["anchor"]["input_ids"].shape[0] for b in DataLoader(pipe, batch_size=None, num_workers=2))
print(n)
"""


def test_fork_safe_without_warning_flood(subprocess_env: dict[str, str]) -> None:
    env = {k: v for k, v in subprocess_env.items() if k != "TOKENIZERS_PARALLELISM"}
    result = subprocess.run([sys.executable, "-c", FORKED], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4000"
    assert "TOKENIZERS_PARALLELISM" not in result.stderr and "just got forked" not in result.stderr



# --------------------------------------------------------------- max_length for every kind
def long_ids(texts: list[str]) -> list[list[int]]:
    """A callable that ignores max_length: 197 ids per text (like an untruncated HF call)."""
    return [[5] * 197 for _ in texts]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_callable_is_cut_to_max_length_and_the_cuts_are_counted(
    sample_files: list[str], num_workers: int
) -> None:
    pipe = ts.read_jsonl(sample_files[:1]).tokenize(long_ids, max_length=32).batch(50)
    records = [r for batch in DataLoader(pipe, batch_size=None, num_workers=num_workers) for r in batch]
    assert len(records) == 1000
    assert {len(r["tokens"][f]) for r in records for f in ("anchor", "positive")} == {32}
    assert pipe.stats().counters["tokenize.truncated"] == 2000  # anchor and positive of each record


def test_a_callable_within_max_length_is_left_alone(sample_files: list[str]) -> None:
    pipe = ts.read_jsonl(sample_files[:1]).tokenize(char_codes, max_length=32)
    records = list(pipe)
    assert [r["tokens"]["anchor"] for r in records] == char_codes([r["anchor"] for r in records])
    assert pipe.stats().counters["tokenize.truncated"] == 0


@pytest.mark.parametrize(
    ("fn", "returned"),
    [(lambda texts: [[1]] * (len(texts) - 1), r"a list of 1 rows"),
     (lambda texts: {"input_ids": [[1] for _ in texts]}, r"a dict"),
     (lambda texts: ["ids" for _ in texts], r"a row of type str")],
)
def test_a_callable_that_returns_something_else_is_refused(
    tmp_path: Any, fn: Callable[[list[str]], Any], returned: str
) -> None:
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "two.jsonl", [["a b", "c"], ["d", "e f"]])
    with pytest.raises(ts.ConfigError, match=rf"tokenize: the tokenizer returned {returned} for 2 texts; "
                                             r"a callable must return one list of token ids per text"):
        list(ts.read_jsonl(path).tokenize(fn))


# --------------------------------------------------------------- slow transformers tokenizers
def slow_bert(vocab_file: str, **kwargs: Any) -> Any:
    """A pure-Python BERT tokenizer (``BertTokenizerLegacy`` in transformers 5, ``BertTokenizer`` before)."""
    import transformers

    cls = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
    tokenizer = cls(vocab_file=vocab_file, **kwargs)
    assert not tokenizer.is_fast
    return tokenizer


@pytest.fixture(scope="module")
def vocab_file(tokenizer_file: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The vocabulary of ``tokenizer_file`` as a ``vocab.txt`` (no download)."""
    vocab = json.loads(Path(tokenizer_file).read_text())["model"]["vocab"]
    path = tmp_path_factory.mktemp("slow") / "vocab.txt"
    path.write_text("".join(f"{token}\n" for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    return str(path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_slow_transformers_tokenizer_gives_the_fast_ids(
    sample_files: list[str], tokenizer_file: str, vocab_file: str, num_workers: int
) -> None:
    def head(spec: Any) -> list[dict[str, Any]]:
        pipe = ts.read_jsonl(sample_files[:1]).tokenize(spec, max_length=32).batch(50)
        loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
        return [r for batch in itertools.islice(loader, 6) for r in batch]

    slow, fast = head(slow_bert(vocab_file)), head(tokenizer_file)
    assert len(slow) == 300
    assert [r["tokens"] for r in slow] == [r["tokens"] for r in fast]
    assert max(len(r["tokens"]["positive"]) for r in slow) == 32


def test_a_slow_transformers_tokenizer_pads_with_its_pad_id(
    tmp_path: Any, vocab_file: str
) -> None:
    from tests.conftest import write_jsonl

    # The same vocabulary, padding with [MASK] (id 4), so the pad id cannot be a default.
    tokenizer = slow_bert(vocab_file, pad_token="[MASK]")
    path = write_jsonl(tmp_path / "two.jsonl", [["short", "a positive"], ["a much longer anchor text", "p"]])
    (batch,) = ts.read_jsonl(path).tokenize(tokenizer, max_length=16).batch(2).collate()
    expected = tokenizer(["short", "a much longer anchor text"], truncation=True, max_length=16)["input_ids"]
    ids, mask = batch["anchor"]["input_ids"], batch["anchor"]["attention_mask"]
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)] == expected
    assert ids[0][~mask[0].bool()].tolist() == [4] * (len(expected[1]) - len(expected[0]))

"""Collated batches go straight into a sentence-transformers model (tiny BERT, built locally)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer

import torchseq as ts

try:  # sentence-transformers >= 6 moved the building blocks
    from sentence_transformers.sentence_transformer import losses, modules
except ImportError:  # pragma: no cover - older sentence-transformers
    from sentence_transformers import losses
    from sentence_transformers import models as modules

MAX_LENGTH = 32
HIDDEN = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_file: str) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the repo tokenizer, saved like a hub model."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_LENGTH,
    )
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir: Path) -> Any:
    word = modules.Transformer(str(model_dir), max_seq_length=MAX_LENGTH)
    pooling = modules.Pooling(HIDDEN, pooling_mode="mean")
    return SentenceTransformer(modules=[word, pooling], device="cpu")


def test_collated_batch_is_a_forward_input(model: Any, sample_files: list[str], model_dir: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    records = ts.read_jsonl(sample_files[:1]).tokenize(tokenizer, max_length=MAX_LENGTH).batch(16)
    collated = records.collate(pad_to_multiple_of=8)
    model.eval()
    for raw, batch in zip(records, collated, strict=True):
        for column in ("anchor", "positive"):
            features = batch[column]
            with torch.no_grad():
                embedded = model(features)["sentence_embedding"]  # the batch dict as it is
            reference = model.encode([r[column] for r in raw], convert_to_tensor=True, batch_size=64)
            assert embedded.shape == (16, HIDDEN)
            torch.testing.assert_close(embedded, reference, atol=1e-5, rtol=1e-4)
        break


def test_trains_with_multiple_negatives_ranking_loss(model: Any, sample_files: list[str], tokenizer_file: str) -> None:
    rows_with_negatives = (
        ts.read_jsonl(sample_files[:1]).map(lambda r: {**r, "negatives": [r["positive"][::-1]]})
        .tokenize(tokenizer_file, max_length=MAX_LENGTH).batch(8).collate()
    )
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    model.train()
    batch = next(iter(rows_with_negatives))
    negatives = batch["negatives"]
    features = [batch["anchor"], batch["positive"],
                *({k: v[:, i] for k, v in negatives.items()} for i in range(negatives["input_ids"].shape[1]))]
    model.zero_grad()
    loss = loss_fn(features, labels=None)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)

"""Shared by the contrastive examples: a tiny BERT built from a config, mean pooling, InfoNCE.

Random weights, no download: the point is the data path, and a model this small
still learns enough in a few hundred CPU steps for the loss to fall clearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel


def tiny_bert(vocab_size: int = 30_522, hidden: int = 32, layers: int = 2, seed: int = 0) -> BertModel:
    """A 2-layer, 32-wide BERT with random weights (about 1M parameters, nearly all embeddings)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=4 * hidden, max_position_embeddings=512)
    return BertModel(config, add_pooling_layer=False)


def embed(model: torch.nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings of a collated column."""
    mask = features["attention_mask"]
    hidden = model(input_ids=features["input_ids"], attention_mask=mask).last_hidden_state
    summed = (hidden * mask.unsqueeze(-1)).sum(1)
    pooled = summed / mask.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(pooled, dim=-1)


def embed_columns(model: torch.nn.Module, *columns: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Embed several collated columns in one forward pass (DDP wants one forward per backward)."""
    width = max(c["input_ids"].shape[1] for c in columns)
    ids = torch.cat([F.pad(c["input_ids"], (0, width - c["input_ids"].shape[1])) for c in columns])
    mask = torch.cat([F.pad(c["attention_mask"], (0, width - c["attention_mask"].shape[1])) for c in columns])
    rows = embed(model, {"input_ids": ids, "attention_mask": mask})
    return list(rows.split([c["input_ids"].shape[0] for c in columns]))


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
             scale: float = 20.0) -> torch.Tensor:
    """In-batch negatives (MultipleNegativesRankingLoss): each anchor's positive among all candidates."""
    return F.cross_entropy(scale * anchors @ candidates.T, targets)

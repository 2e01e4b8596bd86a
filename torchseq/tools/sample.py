"""The small sample bundled with the package (see ``torchseq/data/ATTRIBUTION.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir() -> Path:
    return Path(str(resources.files("torchseq") / "data"))


def sample_shards() -> list[str]:
    """Paths of the 4 bundled JSONL.gz shards (1,000 pairs each)."""
    return sorted(str(p) for p in data_dir().glob("sample-*.jsonl.gz"))


def sample_tokenizer() -> str:
    """Path of the bundled ``tokenizer.json`` (BERT-style WordPiece, [PAD]=0)."""
    return str(data_dir() / "tokenizer.json")

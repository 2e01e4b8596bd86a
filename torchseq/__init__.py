"""torchseq: streaming text-pair pipelines for PyTorch."""

from torchseq.collate import collate_records, pad_sequences
from torchseq.context import Context, Topology
from torchseq.errors import (
    ConfigError,
    DataError,
    DataWarning,
    ShardNotFoundError,
    StateError,
    TorchseqError,
    UnsafeContentError,
)
from torchseq.guard import BalanceWarning
from torchseq.pipeline import Pipeline, read_jsonl, read_webdataset

__version__ = "0.1.0"

__all__ = [
    "BalanceWarning",
    "ConfigError",
    "Context",
    "DataError",
    "DataWarning",
    "Pipeline",
    "ShardNotFoundError",
    "StateError",
    "Topology",
    "TorchseqError",
    "UnsafeContentError",
    "__version__",
    "collate_records",
    "pad_sequences",
    "read_jsonl",
    "read_webdataset",
]

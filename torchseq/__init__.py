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
from torchseq.meter import BatchMeter, pipeline_counters
from torchseq.mixing import mix
from torchseq.pipeline import Pipeline, read_jsonl, read_webdataset
from torchseq.unique import Unique

__version__ = "0.1.0"

__all__ = [
    "BalanceWarning",
    "BatchMeter",
    "ConfigError",
    "Context",
    "DataError",
    "DataWarning",
    "Pipeline",
    "ShardNotFoundError",
    "StateError",
    "Topology",
    "TorchseqError",
    "Unique",
    "UnsafeContentError",
    "__version__",
    "collate_records",
    "mix",
    "pad_sequences",
    "pipeline_counters",
    "read_jsonl",
    "read_webdataset",
]

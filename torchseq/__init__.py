"""torchseq: streaming text-pair pipelines for PyTorch."""

from torchseq.batching import Unique, collate_records, pad_sequences
from torchseq.context import Context, Topology
from torchseq.errors import (
    BalanceWarning,
    ConfigError,
    CorruptShardError,
    DataError,
    DataWarning,
    IndexWarning,
    RemoteAccessError,
    RemoteError,
    RepeatedEpochWarning,
    ShardNotFoundError,
    ShardReadError,
    SkippedInput,
    StateError,
    TooManyErrorsError,
    TorchseqError,
    UnknownFormatError,
    UnsafeContentError,
)
from torchseq.meter import BatchMeter
from torchseq.mixing import mix
from torchseq.pipeline import Pipeline, PipelineStats, pipeline_counters, read_jsonl, read_webdataset
from torchseq.sources.remote import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "BalanceWarning",
    "BatchMeter",
    "ConfigError",
    "Context",
    "CorruptShardError",
    "DataError",
    "DataWarning",
    "IndexWarning",
    "Pipeline",
    "PipelineStats",
    "RemoteAccessError",
    "RemoteError",
    "RepeatedEpochWarning",
    "RetryPolicy",
    "ShardNotFoundError",
    "ShardReadError",
    "SkippedInput",
    "StateError",
    "TooManyErrorsError",
    "Topology",
    "TorchseqError",
    "UnknownFormatError",
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

"""Shard sources: specs, local and remote opening, and the file formats."""

from torchseq.sources.base import ShardSource
from torchseq.sources.jsonl import JsonlSource
from torchseq.sources.spec import ShardSpec, expand_spec
from torchseq.sources.webdataset import WebDatasetSource

__all__ = ["JsonlSource", "ShardSource", "ShardSpec", "WebDatasetSource", "expand_spec"]

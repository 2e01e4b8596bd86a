"""Shard sources: specs, local and remote opening, the record-count index, and the file formats."""

from torchseq.sources.base import ShardSource
from torchseq.sources.jsonl import JsonlSource
from torchseq.sources.options import ReaderOptions
from torchseq.sources.reader import reader_for
from torchseq.sources.spec import ShardSpec, expand_spec
from torchseq.sources.webdataset import WebDatasetSource

__all__ = ["JsonlSource", "ReaderOptions", "ShardSource", "ShardSpec", "WebDatasetSource", "expand_spec",
           "reader_for"]

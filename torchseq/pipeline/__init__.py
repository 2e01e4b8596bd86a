"""The composition root: the only package that knows every layer.

``core`` (the immutable description), ``builders`` (its fluent methods), ``readers``,
``placement`` (the context an iteration reads once),
``run`` (the one runner), ``planning`` (``len()``, ``balance_report``, each
worker's plan), ``checkpoint`` (build and validation), ``guard`` (equal
batches under DDP), ``stats`` and ``shared`` (what workers share with the
main process).
"""

from torchseq.pipeline.checkpoint import STATE_VERSION, pipeline_counters
from torchseq.pipeline.core import Pipeline
from torchseq.pipeline.placement import detect_topology
from torchseq.pipeline.readers import read_jsonl, read_webdataset
from torchseq.pipeline.run import Run
from torchseq.pipeline.stats import PipelineStats

__all__ = ["STATE_VERSION", "Pipeline", "PipelineStats", "Run", "detect_topology", "pipeline_counters",
           "read_jsonl", "read_webdataset"]

"""The readers: where every pipeline starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchseq.errors import DEFAULT_MAX_ERROR_RATE, DEFAULT_MAX_ERRORS
from torchseq.pipeline.core import Pipeline
from torchseq.sources import JsonlSource, ShardSpec, WebDatasetSource


def read_jsonl(spec: ShardSpec, fields: Mapping[str, str] | None = None, on_error: str = "raise", *,
               max_errors: int | None = DEFAULT_MAX_ERRORS, max_error_rate: float | None = DEFAULT_MAX_ERROR_RATE,
               **options: Any) -> Pipeline:
    """Stream pair records from JSON Lines shards (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``).

    Args:
        spec: a path, URL (``https://``, ``s3://``, ``gs://``), glob, brace range
            (``train-{00000..00007}.jsonl.gz``) or a list of them.
        fields: map record fields to source keys, e.g. ``{"anchor": "question",
            "positive": "answer"}``; needed only for dicts of no known format.
        on_error: ``"raise"`` (default), ``"skip"`` or ``"warn"`` for bad lines and shards;
            skipped inputs are counted by reason in :meth:`Pipeline.stats`.
        max_errors: with skip/warn, a worker that skipped more inputs than this
            stops with :class:`~torchseq.TooManyErrorsError`; ``None``: no limit.
        max_error_rate: with skip/warn, a worker that skipped more than this
            fraction of its inputs stops, judged once it has seen 1,000 inputs;
            ``None``: no limit.
        **options: the other reader options, keyword only: ``max_record_bytes``,
            ``storage_options``, ``retry``, ``allow_pipe``, ``index_dir``, ``name`` (see
            :class:`~torchseq.sources.options.ReaderOptions`).

    Raises:
        ConfigError: invalid arguments (at once); data errors are raised while
            iterating, as :class:`~torchseq.DataError` naming ``path:line``.
    """
    return Pipeline(JsonlSource.create(spec, fields=fields, on_error=on_error, max_errors=max_errors,
                                       max_error_rate=max_error_rate, **options))


def read_webdataset(spec: ShardSpec, fields: Mapping[str, str] | None = None, on_error: str = "raise", *,
                    max_errors: int | None = DEFAULT_MAX_ERRORS,
                    max_error_rate: float | None = DEFAULT_MAX_ERROR_RATE, **options: Any) -> Pipeline:
    """Stream pair records from WebDataset tar shards (``.tar``, ``.tar.gz``), or a pre-tokenized directory.

    Members per sample: ``KEY.json`` (a record), ``KEY.<field>.txt`` /
    ``KEY.<field>.json`` (fields), ``KEY.<field>.npy`` (pre-tokenized ids);
    pickle members are refused. Arguments as for :func:`read_jsonl`;
    ``max_record_bytes`` bounds the members of one sample together.
    """
    return Pipeline(WebDatasetSource.create(spec, fields=fields, on_error=on_error, max_errors=max_errors,
                                            max_error_rate=max_error_rate, **options))

"""Fixtures of the source tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory of the test's own (``$TORCHSEQ_CACHE_DIR``; no ``$TORCHSEQ_INDEX_DIR``)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TORCHSEQ_CACHE_DIR", str(cache))
    monkeypatch.delenv("TORCHSEQ_INDEX_DIR", raising=False)
    return cache

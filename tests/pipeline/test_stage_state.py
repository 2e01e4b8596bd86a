"""Every stateful stage through the shared resume helper (pickle, cuts, weights_only)."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

import torchseq as ts
from tests.support.resume import check_resume
from torchseq.tools.sample import sample_shards, sample_tokenizer

TOK = sample_tokenizer()


def base() -> ts.Pipeline:
    return ts.read_jsonl(sample_shards()[:2])


PIPELINES: dict[str, Callable[[], ts.Pipeline]] = {
    "source+batch": lambda: base().batch(50),
    "shuffle": lambda: base().shuffle(300, seed=2).batch(50),
    "tokenize": lambda: base().tokenize(TOK, 32, chunk_size=48).batch(50).collate(),
    "bucket": lambda: base().shuffle(300, seed=2).tokenize(TOK, 64).bucket(32, pool_batches=8).collate(),
    "tokens": lambda: base().tokenize(TOK, 64).batch_by_tokens(2048, pool_size=256).collate(),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_resume_is_exact(name: str, num_workers: int) -> None:
    check_resume(PIPELINES[name], num_workers)


def test_unstarted_pipeline_state_is_empty_and_pickles() -> None:
    pipe = PIPELINES["bucket"]()
    assert pipe.state_dict() == {}
    clone = pickle.loads(pickle.dumps(pipe))
    assert repr(clone) == repr(pipe)


def test_checkpoint_from_other_topology_names_the_field() -> None:
    pipe = PIPELINES["shuffle"]()
    iterator = iter(pipe)
    next(iterator)
    state = pipe.state_dict()
    state["num_workers"] = 8
    other = PIPELINES["shuffle"]()
    other.load_state_dict(state)
    with pytest.raises(ts.StateError, match="num_workers: checkpoint has 8, pipeline has 1"):
        iter(other)


def test_checkpoint_from_other_graph_is_refused() -> None:
    pipe = PIPELINES["source+batch"]()
    next(iter(pipe))
    with pytest.raises(ts.StateError, match="stages: checkpoint has 2, pipeline has 3"):
        PIPELINES["shuffle"]().load_state_dict(pipe.state_dict())

"""The public surface: ``__all__`` is exact, names don't shadow builtins, exceptions fit DataLoader."""

from __future__ import annotations

import builtins
import pickle

import pytest

import torchseq as ts


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(ts) if not n.startswith("_") and not isinstance(getattr(ts, n), type(ts))}
    assert set(ts.__all__) - {"__version__"} == public


def test_no_public_name_shadows_a_builtin() -> None:
    assert not set(ts.__all__) & set(dir(builtins))


def test_contract_methods_exist() -> None:
    pipe = ts.read_jsonl("x.jsonl")
    for name in ("shuffle", "tokenize", "batch", "bucket", "batch_by_tokens", "collate", "set_epoch", "map",
                 "filter", "state_dict", "load_state_dict"):
        assert callable(getattr(pipe, name)), name
    assert callable(ts.read_webdataset)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(ts.DataError, ValueError), (ts.ConfigError, ValueError), (ts.StateError, ValueError),
     (ts.ShardNotFoundError, FileNotFoundError), (ts.UnsafeContentError, ValueError)],
)
def test_exceptions_rebuild_from_their_message(cls: type[Exception], builtin: type[Exception]) -> None:
    # DataLoader re-raises a worker's exception as type(exc)(message).
    error = cls("shard.jsonl:3: invalid JSON")
    assert isinstance(error, ts.TorchseqError) and isinstance(error, builtin)
    rebuilt = type(error)(str(error))
    assert str(rebuilt) == "shard.jsonl:3: invalid JSON"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)

"""The state codec: stage state as builtins, and the checks a checkpoint goes through.

State is what a running stage needs to reproduce the rest of its stream
(see :mod:`torchseq.protocol`), in builtins only: ``torch.load(weights_only=True)``
must read it. Records that hold token-id arrays are converted by
:func:`encode_records` / :class:`SnapshotEncoder`.
"""

from __future__ import annotations

import io
import pickle
import sys
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from torchseq.errors import StateError

State = dict[str, Any]


_ARRAY_TAG = "__ndarray__"
_INTS_TAG = "__ints__"
_BLOBS_TAG = "__records__"
_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})
_BIG_ENDIAN = sys.byteorder == "big"  # packed token ids are stored little-endian


def _blob(data: bytes) -> bytes | str:
    """``data`` for a state: empty bytes as ``""``.

    ``torch.save`` pickles with protocol 2, where ``b""`` becomes a call to the
    global ``bytes``, which ``torch.load(weights_only=True)`` refuses (non-empty
    bytes go through an allowed codec call). Decoders read ``data or b""``.
    """
    return data if data else ""


def _pack_ids(value: Any) -> Any:
    """Token ids (a list of ints, or a list of such lists for negatives) as compact tagged bytes.

    Anything else, or ids out of int32 range, goes through :func:`encode_value`.
    """
    if type(value) is list and value:
        if type(value[0]) is list:
            return [_pack_ids(v) for v in value]
        if type(value[0]) is int:
            try:
                packed = array("i", value)
            except (TypeError, OverflowError):
                return encode_value(value)
            if _BIG_ENDIAN:
                packed.byteswap()
            return {_INTS_TAG: "i", "data": _blob(packed.tobytes())}
    return encode_value(value)


def _unpack_ints(value: dict[str, Any]) -> list[int]:
    packed = array(value[_INTS_TAG], value["data"] or b"")
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tolist()


def encode_record(record: Any) -> Any:
    """:func:`encode_value` of a record, its token ids packed as int32 bytes (see :func:`_pack_ids`)."""
    if type(record) is dict and type(record.get("tokens")) is dict:
        return {key: ({name: _pack_ids(ids) for name, ids in value.items()} if key == "tokens"
                      else encode_value(value))
                for key, value in record.items()}
    return encode_value(record)


def encode_value(value: Any) -> Any:
    """Turn numpy arrays inside builtins into tagged builtins (bytes + dtype + shape)."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: value.dtype.str, "shape": list(value.shape), "data": _blob(value.tobytes())}
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(encode_value(v) for v in value)
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` and :func:`encode_record`."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            flat = np.frombuffer(value["data"] or b"", dtype=np.dtype(value[_ARRAY_TAG]))
            return flat.reshape(value["shape"]).copy()
        if _INTS_TAG in value:
            return _unpack_ints(value)
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_value(v) for v in value)
    return value


class _BuiltinsOnly(pickle.Unpickler):
    """Reads pickles of builtins only: no global is ever looked up, so a blob cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise StateError(f"a record in the checkpoint refers to {module}.{name}; states hold builtins only")


class SnapshotEncoder:
    """:func:`encode_records` for collections that are snapshotted again and again.

    ``StatefulDataLoader`` takes a snapshot every step by default, and a
    shuffle buffer or bucket pool holds thousands of records, most of them
    unchanged since the last one: re-encoding them all cost ~120 ms per
    snapshot for a pool of 4,096 tokenized pairs, and pickling them through
    the worker queue (and unpickling in the main process) another ~14 ms.
    Here a record is encoded once, into one pickle of builtins, while it
    stays in the collections of one snapshot (records are never modified
    once they sit in a buffer or pool): a snapshot is a list of byte strings.
    :func:`decode_records` reads them back with an unpickler that refuses
    every global, so a checkpoint still cannot run code. Call :meth:`encode`
    for each collection of one snapshot, then :meth:`done`.
    """

    __slots__ = ("_kept", "_used")

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Any, bytes]] = {}
        self._used: dict[int, tuple[Any, bytes]] = {}

    def encode(self, records: Iterable[Any]) -> dict[str, list[bytes]]:
        kept, used = self._kept, self._used
        out = []
        for record in records:
            key = id(record)
            entry = used.get(key) or kept.get(key)
            if entry is None or entry[0] is not record:
                # The entry holds the record, so its id cannot be reused meanwhile.
                entry = (record, pickle.dumps(encode_record(record), protocol=pickle.HIGHEST_PROTOCOL))
            used[key] = entry
            out.append(entry[1])
        return {_BLOBS_TAG: out}

    def done(self) -> None:
        """End a snapshot: forget the records it did not include."""
        self._kept, self._used = self._used, {}

    def __call__(self, records: Iterable[Any]) -> dict[str, list[bytes]]:
        """A snapshot of one collection: :meth:`encode`, then :meth:`done`."""
        encoded = self.encode(records)
        self.done()
        return encoded


def encode_records(records: Iterable[Any]) -> list[Any]:
    return [encode_record(r) for r in records]


def decode_records(records: Any) -> list[Any]:
    """Inverse of :func:`encode_records` and :meth:`SnapshotEncoder.encode`."""
    if isinstance(records, dict) and _BLOBS_TAG in records:
        try:
            return [decode_value(_BuiltinsOnly(io.BytesIO(blob)).load()) for blob in records[_BLOBS_TAG]]
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as exc:
            raise StateError(f"a record in the checkpoint is damaged ({type(exc).__name__}: {exc})") from None
    return [decode_value(r) for r in records]


def check_field(name: str, checkpoint: Any, pipeline: Any) -> None:
    """Raise a :class:`StateError` naming ``name`` when a checkpoint field disagrees."""
    if checkpoint != pipeline:
        raise StateError(f"{name}: checkpoint has {checkpoint!r}, pipeline has {pipeline!r}")

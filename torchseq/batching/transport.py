"""How a collated batch crosses a DataLoader worker queue: as compact bytes.

A tensor put on a worker queue is moved to shared memory and its file
descriptor is handed to the main process over a fresh socket connection,
per tensor. For the four small tensors of a pair batch that costs the main
process about 1.4 ms per batch (measured with 2 workers), more than the
main process can spare on a 2-core machine, and the main process then
competes with the workers that tokenize.

:class:`CollatedBatch` is a plain ``dict`` to everything that uses it. When it
is pickled (only on the way through a worker queue) each integer tensor goes
as the bytes of the narrowest integer dtype holding its values (token ids fit
``uint16`` with a 30k vocabulary, masks ``uint8``) and comes back, in the
main process, as a tensor of its original dtype, shape and values.
Everything else pickles as usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_NARROW = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32))
_PACKABLE = frozenset({torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool})
_NUMPY_DTYPES = {
    str(dtype): torch.empty(0, dtype=dtype).numpy().dtype for dtype in _PACKABLE
}


def _narrowest(array: np.ndarray) -> np.dtype[Any]:
    if array.size == 0:
        return np.dtype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in _NARROW:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return array.dtype


def _pack(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if (value.dtype not in _PACKABLE or value.device.type != "cpu" or value.requires_grad
                or value.is_sparse):
            return ("raw", value)
        array = value.contiguous().numpy()
        narrow = _narrowest(array.view(np.uint8) if array.dtype == np.bool_ else array)
        return ("tensor", str(value.dtype), tuple(value.shape), narrow.str, array.astype(narrow).tobytes())
    if type(value) is dict:
        return ("dict", {key: _pack(item) for key, item in value.items()})
    return ("raw", value)


def _unpack(packed: Any) -> Any:
    kind = packed[0]
    if kind == "tensor":
        _, dtype_name, shape, narrow, data = packed
        array = np.frombuffer(data, dtype=narrow).astype(_NUMPY_DTYPES[dtype_name]).reshape(shape)
        return torch.from_numpy(array)
    if kind == "dict":
        return {key: _unpack(item) for key, item in packed[1].items()}
    return packed[1]


def _rebuild(packed: dict[str, Any]) -> dict[str, Any]:
    return {key: _unpack(item) for key, item in packed.items()}


class CollatedBatch(dict[str, Any]):
    """A collated batch: an ordinary ``dict`` that pickles compactly (see the module docs).

    After a trip through a worker queue the main process receives a plain ``dict``.
    """

    __slots__ = ()

    def __copy__(self) -> CollatedBatch:
        # DataLoader's default_convert copies mappings; without this, copy
        # would go through __reduce__ and turn the batch into a plain dict.
        return CollatedBatch(self)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _rebuild, ({key: _pack(value) for key, value in self.items()},)

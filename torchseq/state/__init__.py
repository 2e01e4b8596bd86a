"""The state codec: stage state as builtins, and the checks a checkpoint goes through.

State is what a running stage needs to reproduce the rest of its stream
(see :mod:`torchseq.protocol`), in builtins only: ``torch.load(weights_only=True)``
must read it. Records held in a state are collections of bounded pickles
(:mod:`~torchseq.state.codec`); a resumed stage reads its state through
:class:`~torchseq.state.saved.Saved`, and a checkpoint is compared with its
pipeline by :func:`check_field` / :func:`check_settings`
(:mod:`~torchseq.state.checks`). Every mismatch or malformed field is a
:class:`~torchseq.errors.StateError` whose message starts with the field.
"""

from torchseq.state.checks import check_field, check_settings, join, show, within
from torchseq.state.codec import SnapshotEncoder, State, decode_batches, decode_records, encode_record
from torchseq.state.saved import Saved

__all__ = [
    "Saved",
    "SnapshotEncoder",
    "State",
    "check_field",
    "check_settings",
    "decode_batches",
    "decode_records",
    "encode_record",
    "join",
    "show",
    "within",
]

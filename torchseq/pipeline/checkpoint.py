"""Checkpoints: built and validated in one place.

A pipeline's ``state_dict()`` (format version :data:`STATE_VERSION`) holds,
in builtins only::

    version, graph          the format and the stage names, checked on resume
    epoch, seed             the epoch being produced and the pipeline seed
    rank, world_size,       where this iteration ran (one DataLoader worker
    worker, num_workers     of one rank)
    plan                    the balanced epoch it follows (policy, records, quantum) or None
    stages                  one state per stage, source first (see each stage's ``State:``)
    guard                   the step guard's count of delivered batches (DDP)
    counters                the run's counters when it was taken (numbers only)

Positions are expressed in the epoch's global record order: the source's
state lists, as ``read``, the ``[shard, first, end]`` item ranges of the
epoch's plan this worker has consumed, and the records pulled but not yet
delivered sit, whole, in the buffers and pools of the stages after it
(shuffle buffer, bucket pools, ``unique=`` deferrals). Together they say
which records of the epoch are delivered and which are still to come,
whatever the topology that will read the rest. The file cursor beside
(``range``, ``index``, ``ordinal``) lets the same topology continue without
re-reading.

A mixture child's state (nested in the mixture's) has the same shape without
the placement fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchseq.context import Context
from torchseq.errors import StateError
from torchseq.plan import WorkerPlan
from torchseq.protocol import Counters
from torchseq.state import State, check_field

STATE_VERSION = 3
_PLACEMENT = ("rank", "world_size", "worker", "num_workers")


def plan_summary(plan: WorkerPlan | None) -> dict[str, Any] | None:
    return plan.summary() if plan is not None else None


def numeric_counters(counters: Counters) -> dict[str, int | float]:
    """The counters as flat numbers: dicts of numbers become ``name.key`` entries, lists are left out."""
    out: dict[str, int | float] = {}
    for name, value in counters.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = value
        elif isinstance(value, Mapping):
            for key, inner in value.items():
                if isinstance(inner, (int, float)) and not isinstance(inner, bool):
                    out[f"{name}.{key}"] = inner
    return out


def build(
    graph: list[str],
    ctx: Context,
    stages: list[State],
    guard: State,
    counters: Counters,
    *,
    nested: bool = False,
) -> State:
    """The state of one run (see the module docs)."""
    state: State = {"graph": graph, "plan": plan_summary(ctx.plan), "stages": stages, "guard": guard}
    if nested:
        return state
    return {
        "version": STATE_VERSION,
        "graph": graph,
        "epoch": ctx.epoch,
        "seed": ctx.seed,
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "worker": ctx.worker,
        "num_workers": ctx.num_workers,
        **{k: state[k] for k in ("plan", "stages", "guard")},
        "counters": numeric_counters(counters),
    }


def check_shape(state: Mapping[str, Any], num_stages: int) -> None:
    """At ``load_state_dict``: a state for a pipeline of this many stages (source included)."""
    stages = state.get("stages")
    if not isinstance(stages, list) or len(stages) != num_stages:
        found = len(stages) if isinstance(stages, list) else 0
        raise StateError(f"stages: checkpoint has {found}, pipeline has {num_stages}")


def check_resume(state: Mapping[str, Any], graph: list[str], ctx: Context) -> Context:
    """At the start of a resumed run: the checkpoint fits this pipeline and this worker.

    Returns the context with the checkpoint's epoch.

    Raises:
        StateError: naming the first field that does not fit.
    """
    check_field("version", state.get("version"), STATE_VERSION)
    check_field("stages", state.get("graph"), graph)
    for name in _PLACEMENT:
        check_field(name, state.get(name), getattr(ctx, name))
    check_field("seed", state.get("seed"), ctx.seed)
    epoch = state.get("epoch")
    if type(epoch) is not int or epoch < 0:
        raise StateError(f"epoch: checkpoint has {epoch!r}, pipeline needs an int >= 0")
    return Context(ctx.rank, ctx.world_size, ctx.worker, ctx.num_workers, epoch, ctx.seed)


def check_nested(state: Mapping[str, Any], graph: list[str]) -> None:
    """A mixture child's state fits its pipeline."""
    check_field("stages", state.get("graph"), graph)


def check_plan(saved: Any, ctx: Context) -> None:
    """The balanced epoch the checkpoint followed is the one this run plans."""
    now = plan_summary(ctx.plan)
    if not saved or now is None:
        check_field("balance", saved.get("policy") if saved else None, now and now["policy"])
        return
    for key in ("policy", "num_records", "quantum"):
        check_field(key, saved.get(key), now[key])


def _is_pipeline_state(node: Mapping[str, Any]) -> bool:
    return "version" in node and "graph" in node and isinstance(node.get("stages"), list)


def pipeline_counters(state: Mapping[str, Any]) -> dict[str, int | float]:
    """Counters summed over all pipeline states found in ``state``.

    ``state`` is a ``Pipeline.state_dict()`` or a ``StatefulDataLoader``
    ``state_dict()`` (one pipeline state per worker, as of the last batch each
    worker delivered). Keys are the counters of ``Pipeline.stats()`` as flat
    numbers: ``records``, ``real_tokens``, ``skipped.<reason>``, and the
    stages' own ``"<stage>.<counter>"``, e.g. ``"unique.deferrals"``,
    ``"mix.<source>.records"``.
    """
    out: dict[str, int | float] = {}
    pending: list[Any] = [state]
    while pending:
        node = pending.pop()
        if not isinstance(node, Mapping):
            continue
        if _is_pipeline_state(node):
            for key, value in (node.get("counters") or {}).items():
                out[key] = out.get(key, 0) + value
            continue
        pending.extend(node.values())
    return out

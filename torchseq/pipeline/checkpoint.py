"""Checkpoints: built and validated in one place.

A pipeline's ``state_dict()`` (format version :data:`STATE_VERSION`) holds,
in builtins only::

    version, graph          the format and the stage names, checked on resume
    epoch, seed             the epoch being produced and the pipeline seed
    rank, world_size,       where this iteration ran (one DataLoader worker
    worker, num_workers     of one rank)
    plan                    the balanced epoch it follows (policy, records, quantum) or None
    settings                per stage, source first: the settings that shape its stream
                            (``stage.settings()``: batch size, max_length, tokenizer digest, ...)
    stages                  one state per stage, source first (see each stage's ``State:``);
                            the source's holds the shard list with each shard's identity
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

A mixture child's state (nested in the mixture's) has the same shape with
only ``graph``, ``epoch``, ``settings``, ``plan``, ``stages`` and ``guard``.

On resume every field is checked before anything is read: against the
pipeline (graph, topology, settings, plan, shards) and for its own shape
(types, ranges, positions inside their shards). Whatever does not fit is a
:class:`~torchseq.errors.StateError` whose message starts with the field's
path in the checkpoint, e.g. ``settings[2].max_length: checkpoint has 64,
pipeline has 8``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchseq.context import Context
from torchseq.errors import StateError
from torchseq.plan import WorkerPlan
from torchseq.protocol import Counters
from torchseq.state import Saved, State, check_field, check_settings, join, show

STATE_VERSION = 4
MAX_EPOCH = 2**63 - 1  # the epoch is an int64 in shared memory
_PLACEMENT = ("rank", "world_size", "worker", "num_workers")
_OLDER = ("; it was written by an older torchseq: start the epoch afresh instead "
          "(set_epoch() and a fresh loader)")


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


def settings_of(stage: Any) -> dict[str, Any]:
    """What a stage's ``settings()`` returns (builtins), or ``{}`` for a stage without settings."""
    settings = getattr(stage, "settings", None)
    return dict(settings()) if callable(settings) else {}


def build(
    graph: list[str],
    ctx: Context,
    settings: list[dict[str, Any]],
    stages: list[State],
    guard: State,
    counters: Counters,
    *,
    nested: bool = False,
) -> State:
    """The state of one run (see the module docs)."""
    state: State = {"graph": graph, "epoch": ctx.epoch, "settings": settings, "plan": plan_summary(ctx.plan),
                    "stages": stages, "guard": guard}
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
        **{k: state[k] for k in ("plan", "settings", "stages", "guard")},
        "counters": numeric_counters(counters),
    }


def check_shape(state: Any, num_stages: int) -> None:
    """At ``load_state_dict``: a pipeline state for a pipeline of this many stages (source included)."""
    if not isinstance(state, Mapping):
        raise StateError(f"checkpoint: got {show(state)}, pipeline needs a dict (a Pipeline.state_dict())")
    stages = state.get("stages")
    if type(stages) is not list or len(stages) != num_stages:
        found = len(stages) if type(stages) is list else show(stages)
        raise StateError(f"stages: checkpoint has {found}, pipeline has {num_stages}")


def check_resume(state: Mapping[str, Any], graph: list[str], ctx: Context) -> Context:
    """At the start of a resumed run: the checkpoint fits this pipeline and this worker.

    Returns the context with the checkpoint's epoch.

    Raises:
        StateError: naming the first field that does not fit.
    """
    version = state.get("version")
    check_field("version", version, STATE_VERSION, _OLDER if type(version) is int and version < STATE_VERSION
                else "")
    check_field("graph", state.get("graph"), graph)
    for name in _PLACEMENT:
        check_field(name, state.get(name), getattr(ctx, name))
    check_field("seed", state.get("seed"), ctx.seed)
    saved = Saved(dict(state))
    epoch = saved.integer("epoch", 0, MAX_EPOCH)
    counters = saved.get("counters", "a dict of numbers")
    if type(counters) is not dict:
        raise saved.wrong("counters", "a dict of numbers")
    for key, value in counters.items():
        if type(key) is not str or type(value) not in (int, float) or not value >= 0:
            raise StateError(f"{join('counters', str(key))}: checkpoint has {show(value)}, "
                             "pipeline needs a number >= 0")
    return Context(ctx.rank, ctx.world_size, ctx.worker, ctx.num_workers, epoch, ctx.seed)


def check_nested(state: Mapping[str, Any], graph: list[str], ctx: Context) -> None:
    """A mixture child's state fits its pipeline and the pass it resumes."""
    check_field("graph", state.get("graph"), graph)
    check_field("epoch", state.get("epoch"), ctx.epoch)


def check_stages(state: Mapping[str, Any], settings: list[dict[str, Any]]) -> list[State]:
    """The per-stage settings fit the pipeline's and the stage states are dicts, one per stage."""
    saved = state.get("settings")
    if type(saved) is not list or len(saved) != len(settings):
        found = f"{len(saved)} stages'" if type(saved) is list else show(saved)
        raise StateError(f"settings: checkpoint has {found}, pipeline has {len(settings)} stages' settings")
    for index, (theirs, ours) in enumerate(zip(saved, settings, strict=True)):
        check_settings(f"settings[{index}]", theirs, ours)
    stages = state.get("stages")
    if type(stages) is not list or len(stages) != len(settings):
        shown = str(len(stages)) if type(stages) is list else show(stages)
        raise StateError(f"stages: checkpoint has {shown}, pipeline has {len(settings)}")
    for index, stage in enumerate(stages):
        if type(stage) is not dict:
            raise StateError(f"stages[{index}]: checkpoint has {show(stage)}, pipeline needs a dict")
    return stages


def check_plan(state: Mapping[str, Any], ctx: Context) -> None:
    """The balanced epoch the checkpoint followed (``plan``, ``None`` for none) is the one this run plans."""
    now = plan_summary(ctx.plan)
    if "plan" not in state:
        raise StateError(f"plan: checkpoint has none, pipeline has {show(now)}")
    saved = state["plan"]
    if saved is None or now is None:
        check_field("plan", saved, now)
        return
    if type(saved) is not dict:
        raise StateError(f"plan: checkpoint has {show(saved)}, pipeline has {show(now)}")
    for key in sorted(set(saved) | set(now)):
        check_field(join("plan", key), saved.get(key), now.get(key))


def check_guard(saved: Any, target: int | None) -> State:
    """The step guard's state: ``{}`` without a guard, else its counts within the plan's ``target``."""
    if target is None:
        check_field("guard", saved, {})
        return {}
    guard = Saved(saved, "guard")
    if set(guard.value) - {"yielded", "replayed"}:
        raise StateError(f"guard: checkpoint has {show(saved)}, pipeline needs 'yielded' and 'replayed' only")
    yielded = guard.integer("yielded", 0, target)
    if "replayed" in guard.value:
        guard.integer("replayed", 0, yielded)
    return guard.value


def _is_pipeline_state(node: Mapping[str, Any]) -> bool:
    return "version" in node and "graph" in node and isinstance(node.get("stages"), list)


def pipeline_counters(state: Mapping[str, Any]) -> dict[str, int | float]:
    """Counters summed over all pipeline states found in ``state``.

    ``state`` is a ``Pipeline.state_dict()`` or a ``StatefulDataLoader``
    ``state_dict()`` (one pipeline state per worker, as of the last batch each
    worker delivered). Keys are the counters of ``Pipeline.stats()`` as flat
    numbers: ``records``, ``real_tokens``, ``skipped.<reason>``, and the
    stages' own ``"<stage>.<counter>"``, e.g. ``"unique.deferrals"``,
    ``"mix.<source>.records"``. Anything that is not a number is left out.
    """
    out: dict[str, int | float] = {}
    pending: list[Any] = [state]
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if not isinstance(node, Mapping) or id(node) in seen:
            continue
        seen.add(id(node))
        if _is_pipeline_state(node):
            counters = node.get("counters")
            for key, value in (counters.items() if isinstance(counters, Mapping) else ()):
                if type(key) is str and type(value) in (int, float):
                    out[key] = out.get(key, 0) + value
            continue
        pending.extend(node.values())
    return out

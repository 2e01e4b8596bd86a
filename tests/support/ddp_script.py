"""Run by ``torchrun`` from ``tests/pipeline/test_guard.py``: every balance scenario under real DDP.

Each rank builds the pipelines, iterates them with ``DataLoader(num_workers=2)``
and calls ``all_reduce`` on every step, as a training loop would: a rank that
runs out of batches early leaves the others blocked in ``all_reduce`` (the
process group's timeout turns that hang into an error). Each rank writes
what it delivered to ``OUT.RANK.json``.

A stall explains itself: when a rank makes no step for ``TORCHSEQ_DDP_STALL``
seconds (default 20), a watchdog thread prints every thread's stack of the
rank (``faulthandler``) and of its DataLoader workers (``py-spy dump`` when
``py-spy`` is on ``PATH`` or in ``TORCHSEQ_PY_SPY``, else the workers'
``faulthandler`` on ``SIGUSR1``). The watchdog also says when its own 1 s
sleep took over 5 s: then the machine did not run the rank at all (CPU
starvation or a paused VM), whatever the stacks show. Every rank logs its
phases to stderr (``ddp rank R HH:MM:SS.mmm +SECONDS: ...``), and the
kernel's view of each worker thread (state, wait channel, kernel stack).

The workers start with ``forkserver`` (``TORCHSEQ_DDP_START`` picks another
method). With ``fork``, about 1 run in 40 under CPU load hung: a worker forked
for a new iteration sat in a futex before ``_worker_loop`` began (its thread
still named ``python``, one thread, py-spy unable to read its interpreter
state). That is CPython's gh-112275 on this 3.11.7: a child forked while another
thread of the parent holds the runtime's ``HEAD_LOCK`` (most likely the queue
feeder threads of the previous iteration, exiting) deadlocks in
``PyOS_AfterFork_Child``. A fork server is single-threaded, so the workers it
forks cannot inherit a held lock. ``benchmarks/ddp_soak.py`` reproduces the
hang with ``TORCHSEQ_DDP_START=fork``.

Usage: ``torchrun --nproc_per_node=2 ddp_script.py CONFIG.json OUT``
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import torchseq as ts
from torchseq.errors import BalanceWarning

STALL = float(os.environ.get("TORCHSEQ_DDP_STALL", "20"))
CONTEXT = os.environ.get("TORCHSEQ_DDP_START", "forkserver")
START = time.monotonic()


def log(message: str) -> None:
    """``ddp rank R HH:MM:SS.mmm +SECONDS: message`` (wall clock to line up the ranks) on stderr.

    One ``os.write`` to the descriptor, not ``sys.stderr``: the watchdog thread
    logs too, and a DataLoader worker forked while another thread held
    ``sys.stderr``'s lock would inherit it held.
    """
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    rank = os.environ.get("RANK", "?")
    os.write(2, f"ddp rank {rank} {stamp} +{time.monotonic() - START:.2f}s: {message}\n".encode())


def process_age() -> float:
    """Seconds since this process started (imports included), from ``/proc``; 0 where unknown."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return 0.0


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the DataLoader workers of a rank)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


class Watchdog:
    """Dump every stack of this rank and its workers when no step came for ``STALL`` seconds."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self._watch, name="ddp-watchdog", daemon=True)
        self.thread.start()

    def step(self, phase: str) -> None:
        self.phase = phase
        self.last = time.monotonic()

    def _watch(self) -> None:
        while True:
            before = time.monotonic()
            time.sleep(1.0)
            slept = time.monotonic() - before
            if slept > 5.0:  # the machine, not the pipeline: this process did not run at all
                log(f"MACHINE: a 1 s sleep took {slept:.1f}s; load {os.getloadavg()}")
            idle = time.monotonic() - self.last
            if idle >= STALL:
                self.dump(idle)
                self.last = time.monotonic()  # again after another STALL seconds

    def dump(self, idle: float) -> None:
        workers = children(os.getpid())
        log(f"STALL: no step for {idle:.1f}s in {self.phase}; workers {workers}; load {os.getloadavg()}")
        faulthandler.dump_traceback(file=2, all_threads=True)  # written by C, no Python lock
        spy = os.environ.get("TORCHSEQ_PY_SPY") or shutil.which("py-spy")
        for pid in workers:
            log(f"worker {pid} as the kernel sees it:\n{kernel_view(pid)}")
            if spy:
                try:
                    done = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True,
                                          text=True, timeout=30)
                    log(f"py-spy dump of worker {pid}:\n{done.stdout}{done.stderr}")
                except (OSError, subprocess.SubprocessError) as exc:
                    log(f"py-spy dump of worker {pid} failed: {exc!r}")
            else:
                log(f"worker {pid} (faulthandler on SIGUSR1):")
                try:
                    os.kill(pid, signal.SIGUSR1)
                except OSError as exc:
                    log(f"worker {pid}: {exc!r}")


def kernel_view(pid: int) -> str:
    """State, wait channel and kernel stack of each thread of ``pid`` (what py-spy cannot show)."""
    lines: list[str] = []
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"))
    except OSError as exc:
        return f"  gone: {exc!r}"
    for task in tasks:
        base = f"/proc/{pid}/task/{task}"
        parts = []
        for name in ("comm", "wchan", "stack"):
            try:
                with open(f"{base}/{name}") as f:
                    parts.append(f.read().strip())
            except OSError as exc:
                parts.append(f"({name}: {exc.strerror})")
        try:
            with open(f"{base}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            state = "?"
        comm, wchan, stack = parts
        lines.append(f"  thread {task} {comm!r} state {state} wchan {wchan}\n    " + stack.replace("\n", "\n    "))
    return "\n".join(lines)


def worker_init(worker_id: int) -> None:
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def guids(batch: Any) -> list[int]:
    if isinstance(batch, dict):
        return [int(g) for g in batch["guid"]]
    return [int(r["guid"]) for r in batch]


def not_a_multiple_of_7(record: dict[str, Any]) -> bool:
    return bool(record["guid"] % 7)


def scenarios(shards: list[str], tokenizer: str) -> dict[str, tuple[Any, int]]:
    """name -> (pipeline, epochs)."""
    read = ts.read_jsonl(shards).shuffle(buffer_size=64, seed=3)
    tokens = read.tokenize(tokenizer, max_length=32)
    return {
        "bucket-partial": (tokens.bucket(16, pool_batches=4).collate(), 1),
        "batch-drop": (read.batch(16).balance("drop"), 1),
        "bucket-pad": (tokens.bucket(16, pool_batches=4).collate().balance("pad"), 1),
        "batch-wrap": (read.batch(16).balance("wrap"), 3),
        "tokens-partial": (tokens.batch_by_tokens(max_tokens=640, pool_size=256).collate(), 1),
        # A filter the record counts cannot foresee: the step guard repeats batches.
        "filter-partial": (read.filter(not_a_multiple_of_7).batch(16), 1),
    }


def main(config_path: str, out: str) -> None:
    with open(config_path) as f:
        config = json.load(f)
    if CONTEXT == "forkserver":  # the server imports these once; each worker forked from it starts at once
        multiprocessing.set_forkserver_preload(["torch", "torchseq", "tokenizers"])
    watchdog = Watchdog()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    log(f"process group ready, {process_age():.1f}s after the process started")
    results: dict[str, Any] = {}
    for name, (pipe, epochs) in scenarios(config["shards"], config["tokenizer"]).items():
        loader = DataLoader(pipe, batch_size=None, num_workers=2, worker_init_fn=worker_init,
                            multiprocessing_context=CONTEXT)
        runs = []
        for epoch in range(epochs):
            pipe.set_epoch(epoch)
            delivered: list[int] = []
            steps = 0
            watchdog.step(f"{name} epoch {epoch} before its first step")
            log(f"{name} epoch {epoch}: start")
            gaps: list[float] = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BalanceWarning)  # the filter scenario warns (in workers)
                for batch in loader:
                    flag = torch.ones(1)
                    dist.all_reduce(flag)  # blocks forever if another rank ran out
                    gaps.append(time.monotonic() - watchdog.last)
                    steps += 1
                    watchdog.step(f"{name} epoch {epoch} after step {steps}")
                    delivered.extend(guids(batch))
            total = torch.tensor([steps])
            dist.all_reduce(total)
            log(f"{name} epoch {epoch}: {steps} steps, first {gaps[0] if gaps else 0:.2f}s, "
                f"longest {max(gaps, default=0):.2f}s")
            runs.append({
                "steps": steps,
                "all_steps": int(total),
                "len": len(pipe),
                "report": pipe.balance_report(),
                "guids": delivered,
            })
        results[name] = runs
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(results, f)
    watchdog.step("the final barrier")
    dist.barrier()
    dist.destroy_process_group()
    log("done")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

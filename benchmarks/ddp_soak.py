"""Soak the torchrun test: run it many times in a row under extra CPU load, count passes.

Each run is the test ``tests/pipeline/test_guard.py::test_torchrun_two_ranks_two_workers``
(``--pytest``, the acceptance form) or the same ``torchrun`` job driven directly
(default: fresh shards and a fresh record-count index per run, every rank's log
kept). ``--load K`` starts ``K`` busy-loop processes for the duration (each in a
session of its own, as torchrun starts each rank) and kills them afterwards.
Logs go to ``--logs`` (``run-NNN.log``); a summary line per run and the
totals are printed.

Usage::

    PYTHONPATH=. python benchmarks/ddp_soak.py --runs 50 --load 2 [--pytest] [--logs DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/pipeline/test_guard.py::test_torchrun_two_ranks_two_workers"


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.setdefault("TOKENIZERS_PARALLELISM", "false")
    return out


def direct_run(work: Path) -> tuple[int, str]:
    """The test's torchrun job on fresh shards in ``work``: ``(returncode, stdout + stderr)``."""
    from tests.conftest import write_jsonl
    from tests.pipeline.test_guard import SIZES, rows
    from tests.support.launch import torchrun
    from torchseq.tools.sample import sample_tokenizer

    paths, start = [], 0
    for k, size in enumerate(SIZES):
        paths.append(write_jsonl(work / f"part-{k:03d}.jsonl.gz", rows(start, size)))
        start += size
    config = work / "config.json"
    config.write_text(json.dumps({"shards": paths, "tokenizer": sample_tokenizer()}))
    script = REPO / "tests" / "support" / "ddp_script.py"
    try:
        done = torchrun(str(script), [str(config), str(work / "out")], env(), timeout=240)
    except AssertionError as exc:  # timed out: the job was killed
        return -1, str(exc)
    return done.returncode, done.stdout + done.stderr


def pytest_run() -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "pytest", TEST, "-n", "0", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, env=env(), capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--load", type=int, default=2, help="busy-loop processes to run meanwhile")
    parser.add_argument("--pytest", action="store_true", help="run the pytest test (else the job directly)")
    parser.add_argument("--logs", default=None, help="directory for run logs (default: a new temp dir)")
    args = parser.parse_args()
    logs = Path(args.logs or tempfile.mkdtemp(prefix="ddp-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    # Each burner in a session of its own: with the kernel's autogroup scheduling (CPU shared per
    # session) burners in this runner's session would only compete with the runner itself,
    # while torchrun starts every rank in a session of its own.
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
               for _ in range(args.load)]
    passed = failed = 0
    try:
        for k in range(args.runs):
            began = time.monotonic()
            if args.pytest:
                code, text = pytest_run()
            else:
                with tempfile.TemporaryDirectory(prefix="ddp-soak-run-") as work:
                    code, text = direct_run(Path(work))
            took = time.monotonic() - began
            (logs / f"run-{k:03d}.log").write_text(text)
            longest = max((float(g) for g in re.findall(r"longest ([0-9.]+)s", text)), default=0.0)
            first = max((float(g) for g in re.findall(r"first ([0-9.]+)s", text)), default=0.0)
            stalls = text.count("STALL:")
            ok = code == 0
            passed += ok
            failed += not ok
            print(f"run {k + 1}/{args.runs}: {'pass' if ok else 'FAIL'} in {took:.1f}s, longest step "
                  f"{longest:.2f}s, longest first step {first:.2f}s, stalls {stalls}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    print(f"{passed} passed, {failed} failed of {args.runs} (load {args.load}, logs in {logs})")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

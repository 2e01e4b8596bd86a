"""The main job: ``python -m torchseq demo`` on the bundled sample."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_reports(subprocess_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "torchseq", "demo", "--epochs", "1"], env=subprocess_env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    pattern = r"epoch 0: (\d+) pairs in (\d+) batches.*pairs/s with 2 workers.*padding efficiency (0\.\d+)"
    match = re.search(pattern, out)
    assert match, out
    assert int(match.group(1)) == 4000
    assert 0.5 < float(match.group(3)) <= 1.0
    assert "anchor:" in out and "positive:" in out


def test_cli_help(subprocess_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "torchseq", "demo", "--help"], capture_output=True, text=True,
                            timeout=60, env=subprocess_env)
    assert result.returncode == 0 and "bundled sample" in result.stdout


def test_quickstart_example(subprocess_env: dict[str, str]) -> None:
    from tests.conftest import REPO

    result = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--epochs", "2"],
                            env=subprocess_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["epoch 0: 4000 pairs", "epoch 1: 4000 pairs"]

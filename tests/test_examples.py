"""The contrastive examples run as documented in the README, with short settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.support.launch import run, torchrun

EXAMPLES = REPO / "examples"


def result(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    parsed: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return parsed


def test_train_contrastive(subprocess_env: dict[str, str]) -> None:
    done = run([sys.executable, str(EXAMPLES / "train_contrastive.py"), "--max-steps", "50", "--log-every", "10"],
               subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = result(done.stdout)
    assert out["steps"] == 50
    assert out["last_loss"] < out["first_loss"] - 0.3, out
    assert out["padding_efficiency"] > 0.7
    assert 25 < out["negatives_per_anchor"] <= 31
    assert out["unique.records"] > 0 and "duplicates deferred" in done.stdout
    assert done.stdout.count("step ") == 5


def test_lightning_contrastive(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    cmd = [sys.executable, str(EXAMPLES / "lightning_contrastive.py"), "--max-steps", "30", "--val-every", "15",
           "--log-every", "10", "--out", str(tmp_path)]
    done = run(cmd, subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = result(done.stdout)
    assert out["steps"] == 30
    assert out["last_loss"] < out["first_loss"] - 0.2, out
    assert out["val_loss"] is not None
    assert set(out) >= {"data/source/desc", "data/target/desc", "data/source/reverse", "data/pairs_per_s",
                        "data/unique.deferral_rate"}
    assert abs(out["data/source/desc"] - 2 / 3) < 0.25
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    header = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "data/padding_efficiency" in header and "train/loss" in header


def test_ddp_contrastive_under_torchrun(subprocess_env: dict[str, str]) -> None:
    done = torchrun(str(EXAMPLES / "ddp_contrastive.py"), ["--max-steps", "30"], subprocess_env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = result(done.stdout)
    assert out["world_size"] == 2
    assert out["steps"] == out["agreed_steps"] == 30
    assert out["last_loss"] < out["first_loss"] - 0.3, out
    assert 55 < out["negatives_per_anchor"] <= 63  # 2 ranks x 32 pairs, minus the positive


def test_custom_stage_example_prints_what_the_docs_show(subprocess_env: dict[str, str]) -> None:
    import subprocess

    done = subprocess.run([sys.executable, str(EXAMPLES / "custom_stage.py")], cwd=REPO, env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # docs/architecture.md shows this output beside the command.
    assert done.stdout.splitlines() == ["kept 978, stats: {'drop_short.dropped': 22}", "{'dropped': 22}"]

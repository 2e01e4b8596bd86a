"""The documentation: the mkdocs site builds strictly, and the README's front door holds.

The README must stay short, show exactly the test command that ``.ci/run``
runs, and have a quick start that runs as pasted from the repository root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_BYTES = 12 * 1024


def child_env() -> dict[str, str]:
    """This checkout's torchseq first on the path; no mkdocs 2.0 banner in the logs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NO_MKDOCS_2_WARNING"] = "1"
    return env


def quick_start(readme: str) -> str:
    """The first ``python`` code block under the README's ``## Quick start`` heading."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert block, "the README's quick start has no ```python block"
    return block.group(1)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("torchseq.read_jsonl", "torchseq.Pipeline.bucket", "torchseq.lightning.PairDataModule"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move detail to docs/"


def test_readme_test_command_is_the_ci_command() -> None:
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci_lines if line.startswith("python3 -m venv")]
    assert len(commands) == 1, f".ci/run should hold one 'python3 -m venv' line, found {commands}"
    assert commands[0] in README.read_text(encoding="utf-8"), f"README.md does not show the CI command {commands[0]!r}"


def test_readme_quick_start_runs(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quick_start(README.read_text(encoding="utf-8")), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"the README quick start failed:\n{done.stderr[-4000:]}"
    # The README shows what it prints: that output must be this output.
    shown = re.search(r"^It prints:\n\n```\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert shown, "the README's quick start shows no output ('It prints:' and a code block)"
    assert done.stdout.splitlines() == shown.group(1).splitlines()

"""Running real ``torchrun`` jobs from tests, and never leaving processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence


def torchrun(
    script: str, args: Sequence[str], env: dict[str, str], nproc: int = 2, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=nproc script *args``; kills the whole job on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           script, *args]
    return run(cmd, env, timeout)


def run(cmd: Sequence[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own session so that a timeout takes its children down too."""
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)

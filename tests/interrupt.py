"""Ctrl-C in a terminal, for the training tests: start a command in its own process group, wait
for its first staged checkpoint, send SIGINT to the whole group (Ray's processes too)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def one_thread_env() -> dict[str, str]:
    """This process's environment with one OpenMP thread: a tiny MLP trains fastest on one, on a busy
    machine by far."""
    return dict(os.environ, OMP_NUM_THREADS="1")


def interrupt_after_first_checkpoint(command: list[str], staged: Path, pattern: str, wait_s: float,
                                     exit_wait_s: float) -> subprocess.CompletedProcess:  # fmt: skip
    """Run `command`, SIGINT its process group once `staged.glob(pattern)` matches (within `wait_s`),
    and return what it printed and its exit code once it has stopped (within `exit_wait_s`)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env(),
        start_new_session=True,
        # a test runner started in the background by a shell ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + wait_s
    while not list(staged.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=exit_wait_s)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)

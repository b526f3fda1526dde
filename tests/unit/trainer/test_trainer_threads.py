"""CPU threads for training: as many as there are idle cores now, not as the lagging load average says."""

from __future__ import annotations

import os
import subprocess
import sys

from hotlora_trainer.fit import cpu_threads, idle_cores


def test_idle_cores_sees_a_busy_core_at_once() -> None:
    cores = os.cpu_count() or 1
    assert 0 <= idle_cores() <= cores + 0.01
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert idle_cores() <= cores - 0.5  # one core is taken right now
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_asked_for_win() -> None:
    assert cpu_threads(3) == 3
    assert cpu_threads(None) >= 1

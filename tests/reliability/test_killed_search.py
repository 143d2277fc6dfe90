"""The schedule search's worker processes stop when the training process that started them is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCH = """
import sys
from reporting.setting_search import search_schedules
from runtime import EngineOptions
options = EngineOptions(groups=2, probe_blocks=0, forecast_order=1)
search_schedules(sys.argv[1], [0.3, 0.5, 0.7], conditions=[1, 2, 3], seeds=[1, 2, 3], steps=12, guidance=2.0,
                 engine_options=options, sweeps=50, workers=2)
"""


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_exit_when_the_parent_is_killed(tiny_digits_dir: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SEARCH, str(tiny_digits_dir)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            # the pool's workers (a spawn context also starts a resource tracker, which has no work to lose)
            workers = [
                pid for pid in children_of(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            time.sleep(0.2)
        assert len(workers) == 2, "the search did not start its two worker processes"
        time.sleep(2.0)  # let them load the model and start searching
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "worker processes outlived their killed parent"

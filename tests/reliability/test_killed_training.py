"""A training run killed with SIGKILL resumes from its last checkpoint and the same offline W&B run, with intact files.

The training subprocess is started from this test process, which may already run a W&B service for in-process tests;
``train_agent.py`` does not inherit it (an inherited service would keep the killed run registered as in use).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from agents.checkpoints import read_state
from policies import load_policy
from tests.agents.wandb_records import read_offline_run
from tests.digits_fixtures import ONE_SETTING_CONFIG, TINY_WARM_START

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [
    "env.num_inference_steps=5",
    "env.groups=2",
    "agent.num_envs=4",
    "agent.n_steps=10",
    "agent.batch_size=20",
    "agent.n_epochs=1",
    "eval.every_timesteps=80",
    "eval.num_samples=2",
    "eval.grid_samples=0",
    "checkpoint.every_timesteps=40",
    *TINY_WARM_START,
]


def kill_tree(pid: int) -> None:
    """SIGKILLs ``pid``, all its descendants and W&B's service process for it (found through /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    family, frontier = {pid}, [pid]
    for proc in Path("/proc").glob("[0-9]*/cmdline"):  # W&B's service detaches but names its parent: --pid PID
        try:
            arguments = proc.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--pid" in arguments and arguments[arguments.index(b"--pid") + 1 :][:1] == [str(pid).encode()]:
            family.add(int(proc.parent.name))
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in family]
        family.update(children)
        frontier.extend(children)
    for member in family:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train_agent.py"), "--wandb-mode", "offline", *args]


def test_sigkill_then_resume(tiny_digits_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    settings = [f"env.model={tiny_digits_dir}", *SETTINGS]
    overrides = [item for s in [*settings, "agent.total_timesteps=100000"] for item in ("--set", s)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command("--config", str(ONE_SETTING_CONFIG), *overrides, "--out", str(run_dir)),
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = run_dir / "checkpoints" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if state_file.is_file() and json.loads(state_file.read_text())["num_timesteps"] >= 120:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 120 s")
    finally:
        if process.poll() is None:
            kill_tree(process.pid)  # W&B's helper process goes too, as when a job is killed
        _, errors = process.communicate()
    assert process.returncode == -signal.SIGKILL, errors.decode()[-3000:]

    state = read_state(run_dir / "checkpoints")
    assert state is not None and state["num_timesteps"] >= 120
    with zipfile.ZipFile(run_dir / "checkpoints" / "model.zip") as archive:
        assert archive.testzip() is None
    assert not list((run_dir / "checkpoints").glob(".*-*"))
    if (run_dir / "policy.safetensors").is_file():
        load_policy(run_dir / "policy.safetensors")

    target = state["num_timesteps"] + 40
    resumed = subprocess.run(
        command("--resume", str(run_dir), "--set", f"agent.total_timesteps={target}"),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = read_state(run_dir / "checkpoints")
    assert after["num_timesteps"] >= target
    load_policy(run_dir / "policy.safetensors")
    assert after["wandb_run_id"] == state["wandb_run_id"]
    assert read_offline_run(run_dir / "wandb").run_ids == {state["wandb_run_id"]}

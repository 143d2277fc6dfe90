"""``train_agent.py --workers 2``: the schedules, evaluations and policy of the same run in one process; its
``--resume`` may go on in one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import ray
import yaml
from safetensors.torch import load_file

import train_agent
from tests.digits_fixtures import ONE_SETTING_CONFIG
from tests.reliability.test_determinism import SETTINGS


def train(model_dir: Path, out: Path, *flags: str) -> Path:
    settings = [f"env.model={model_dir}", "agent.seed=3", "ray.env_shards=2", "ray.cpus_per_worker=0.5", *SETTINGS]
    argv = [item for s in settings for item in ("--set", s)]
    config = ["--config", str(ONE_SETTING_CONFIG)]
    assert train_agent.main([*config, *argv, *flags, "--wandb-mode", "disabled", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(ray_cluster: None, tiny_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run in this process (two shards, one after another) and on two Ray workers."""
    folder = tmp_path_factory.mktemp("runs")
    return train(tiny_digits_dir, folder / "local"), train(tiny_digits_dir, folder / "ray", "--workers", "2")


def test_two_ray_workers_train_the_policy_of_one_process(runs: tuple[Path, Path]) -> None:
    local, remote = runs
    assert yaml.safe_load((remote / "config.yaml").read_text())["ray"]["workers"] == 2
    teacher = "teacher-schedules.json"
    assert json.loads((local / teacher).read_text()) == json.loads((remote / teacher).read_text())
    history, timed = json.loads((local / "eval-history.json").read_text()), "wall_speedup"  # each machine's clock
    again = json.loads((remote / "eval-history.json").read_text())
    assert [e["timesteps"] for e in history] == [e["timesteps"] for e in again] == [0, 96]
    for mine, theirs in zip(history, again, strict=True):
        assert mine["score"] == theirs["score"]
        for a, b in zip(mine["points"], theirs["points"], strict=True):
            assert {k: v for k, v in a.items() if k != timed} == {k: v for k, v in b.items() if k != timed}
    mine, theirs = load_file(str(local / "policy.safetensors")), load_file(str(remote / "policy.safetensors"))
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert bool((mine[key] == theirs[key]).all()), key
    assert ray.is_initialized()  # the run joined the running cluster and left it running


def test_a_ray_run_resumes_in_one_process_with_its_shards(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = shutil.copytree(runs[1], tmp_path / "run")
    argv = ["--resume", str(run), "--workers", "1", "--set", "agent.total_timesteps=128", "--wandb-mode", "disabled"]
    assert train_agent.main(argv) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["ray"]["workers"], config["ray"]["env_shards"]) == (1, 2)
    history = json.loads((run / "eval-history.json").read_text())
    assert [entry["timesteps"] for entry in history] == [0, 96, 128]

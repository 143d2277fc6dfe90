"""The adaptive method end to end on the tiny model: per-sample teacher, DAgger, GRPO groups, adaptive features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import runtime
import train_agent
from agents.config import ConfigError, load_config
from agents.training import Trainer
from envs import CacheScheduleVecEnv
from policies import load_policy
from runtime.observations import ADAPTIVE_FEATURES
from tests.digits_fixtures import ONE_SETTING_CONFIG, TINY_WARM_START, tiny_digits_pipeline

ADAPTIVE = "[" + ",".join(ADAPTIVE_FEATURES) + "]"
TINY = [
    "env.scheduler=default",
    "env.num_inference_steps=5",
    "env.groups=2",
    "agent.num_envs=4",
    "agent.n_steps=10",
    "agent.batch_size=20",
    "agent.n_epochs=2",
    "agent.total_timesteps=40",
    "eval.every_timesteps=200",
    "eval.num_samples=4",
    "eval.grid_samples=0",
    "checkpoint.every_timesteps=40",
    *TINY_WARM_START,
    "warm_start.teacher=per_sample",
    "warm_start.dagger_rounds=1",
    "warm_start.dagger_epochs=5",
    f"env.features={ADAPTIVE}",
    "env.group_rollouts=2",
]


@pytest.fixture(scope="module")
def adaptive_run(tiny_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("adaptive")
    argv = [item for override in [f"env.model={tiny_digits_dir}", *TINY] for item in ("--set", override)]
    config = ["--config", str(ONE_SETTING_CONFIG)]
    assert train_agent.main([*config, *argv, "--wandb-mode", "disabled", "--out", str(run_dir)]) == 0
    return run_dir


def test_per_sample_teacher_and_dagger_are_recorded(adaptive_run: Path) -> None:
    teacher = json.loads((adaptive_run / "teacher-schedules.json").read_text())
    assert teacher["teacher"] == "per_sample"
    (anchor,) = teacher["settings"]  # one setting: the environment's
    assert (anchor["scheduler"], anchor["num_inference_steps"]) == ("default", 5)
    for entry in anchor["budgets"].values():
        tables = np.asarray(entry["schedule"])
        assert tables.shape == (2, 5, 2)  # one (steps, groups) table per search sample
        assert len(entry["sample_psnr"]) == 2 and entry["psnr"] == pytest.approx(np.mean(entry["sample_psnr"]))
    (round_one,) = teacher["dagger"]
    assert set(round_one["policy_psnr"]["default_5"]) == {"0.4", "0.6"} and 0.0 <= round_one["accuracy"] <= 1.0


def test_exported_policy_reads_the_adaptive_features_and_runs(adaptive_run: Path, tiny_digits_dir: Path) -> None:
    policy = load_policy(adaptive_run / "policy.safetensors")
    assert policy.feature_names == runtime.feature_names(2, ADAPTIVE_FEATURES)
    pipe = tiny_digits_pipeline()
    engine = runtime.enable_cache(pipe.transformer, policy, budget=0.5, **policy.engine_options)
    try:
        assert engine.feature_names == policy.feature_names
        with torch.inference_mode():
            images = pipe(class_labels=[1, 2], num_inference_steps=5, output_type="pt").images
    finally:
        runtime.disable_cache(pipe.transformer)
    assert torch.isfinite(images).all()
    history = json.loads((adaptive_run / "eval-history.json").read_text())
    for point in history[0]["points"]:
        assert point["replay_psnr"] is not None and 0.0 <= point["disagreement"] <= 1.0


def test_a_run_reuses_an_earlier_runs_schedules(adaptive_run: Path, tiny_digits_dir: Path, tmp_path: Path) -> None:
    overrides = [f"env.model={tiny_digits_dir}", *TINY, f"warm_start.schedules_from={adaptive_run}"]
    run_dir = tmp_path / "again"
    Trainer(load_config(None, overrides), run_dir, wandb_mode="disabled").run()
    first = json.loads((adaptive_run / "teacher-schedules.json").read_text())["settings"][0]["budgets"]
    again = json.loads((run_dir / "teacher-schedules.json").read_text())["settings"][0]["budgets"]
    assert {b: e["schedule"] for b, e in again.items()} == {b: e["schedule"] for b, e in first.items()}

    shared = load_config(None, [*overrides, "warm_start.teacher=shared"])
    with pytest.raises(ConfigError, match="holds a 'per_sample' teacher"):
        Trainer(shared, tmp_path / "shared", wandb_mode="disabled").run()


def test_group_rollouts_share_their_draw_and_rewards_are_relative_to_the_group(tiny_digits_dir: Path) -> None:
    config = {"model": str(tiny_digits_dir), "num_inference_steps": 4, "groups": 2, "group_rollouts": 2}
    venv = CacheScheduleVecEnv(4, config, seed=3)
    try:
        venv.reset()
        draws = [(i["condition"], i["seed"], i["budget"]) for i in venv.reset_infos]
        assert draws[0] == draws[1] and draws[2] == draws[3] and draws[0] != draws[2]
        rng = np.random.default_rng(0)
        for _ in range(4):
            actions = rng.integers(0, runtime.NUM_ACTIONS, size=(4, 2))
            _, rewards, dones, infos = venv.step(actions)
            np.testing.assert_allclose(rewards.reshape(2, 2).sum(axis=1), 0.0, atol=1e-5)
            own = np.array([info["reward"] for info in infos])
            np.testing.assert_allclose(rewards, own - own.reshape(2, 2).mean(axis=1).repeat(2), atol=1e-5)
        assert dones.all()
    finally:
        venv.close()
    with pytest.raises(ValueError, match="not a multiple of env.group_rollouts"):
        CacheScheduleVecEnv(3, config)


def test_the_replay_of_a_static_schedule_is_that_schedule(tiny_digits_dir: Path) -> None:
    from policies import StaticSchedulePolicy
    from reporting.evaluation import evaluate_policy

    table = np.full((5, 2), int(runtime.Action.FORECAST))
    table[[0, 1, 3]] = int(runtime.Action.COMPUTE)
    table[2, 1] = int(runtime.Action.COMPUTE)
    policy = StaticSchedulePolicy(table, engine_options={"groups": 2, "probe_blocks": 0, "forecast_order": 1})
    (point,) = evaluate_policy(
        tiny_digits_pipeline(), policy, conditions=[1, 2], seeds=[3, 4], steps=5, guidance=2.0, replay=True
    )
    assert point.disagreement == 0.0
    assert point.replay_psnr == pytest.approx(point.psnr, abs=1e-6)  # the same decisions, step for step

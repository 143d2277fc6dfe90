"""End to end: train_agent.py trains, logs to W&B offline, exports a policy acting like the SB3 model, resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecNormalize

import train_agent
from agents.checkpoints import NORMALIZATION_FILE, read_state
from envs import CacheScheduleVecEnv
from policies import LearnedPolicy, load_policy
from tests.agents.wandb_records import read_offline_run
from tests.digits_fixtures import ONE_SETTING_CONFIG, TINY_WARM_START
from zoo.pipelines import MiniDiTPipeline

TINY = [
    "env.scheduler=default",
    "env.num_inference_steps=5",
    "env.groups=2",
    "agent.num_envs=4",
    "agent.n_steps=10",
    "agent.batch_size=20",
    "agent.n_epochs=2",
    "eval.every_timesteps=200",
    "eval.num_samples=4",
    "eval.grid_samples=2",
    "checkpoint.every_timesteps=40",
    *TINY_WARM_START,
]


@pytest.fixture(scope="module")
def trained_run(tiny_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [f"env.model={tiny_digits_dir}", "agent.total_timesteps=200", *TINY]
    argv = [item for override in overrides for item in ("--set", override)]
    config = ["--config", str(ONE_SETTING_CONFIG)]
    assert train_agent.main([*config, *argv, "--wandb-mode", "offline", "--out", str(run_dir)]) == 0
    return run_dir


def test_training_exports_a_policy_and_logs_to_wandb(trained_run: Path) -> None:
    policy = load_policy(trained_run / "policy.safetensors")
    assert isinstance(policy, LearnedPolicy)
    assert policy.budget_conditioned and policy.num_groups == 2
    config = train_agent.load_config(trained_run / "config.yaml")
    assert policy.engine_options["groups"] == 2
    assert policy.engine_options["forecast_order"] == config.env.forecast_order
    assert (trained_run / "schedule.safetensors").is_file()
    teacher = json.loads((trained_run / "teacher-schedules.json").read_text())
    (anchor,) = teacher["settings"]
    assert set(anchor["budgets"]) == {"0.4", "0.6"} and 0.0 <= teacher["clone"]["accuracy"] <= 1.0
    history = json.loads((trained_run / "eval-history.json").read_text())
    assert [entry["timesteps"] for entry in history] == [0, 200]  # after the warm start, then at the end
    best = max(history, key=lambda entry: entry["score"])
    assert json.loads((trained_run / "policy-eval.json").read_text())["timesteps"] == best["timesteps"]

    logged = read_offline_run(trained_run / "wandb")
    assert {"env", "agent", "eval", "checkpoint", "wandb"} <= logged.config_keys
    for key in ("eval/score", "eval/budget_0.25/psnr", "warm_start/accuracy", "train/value_loss"):
        assert key in logged.history_keys, key
    assert "rollout/ep_rew_mean" in logged.history_keys
    assert any(k.startswith("eval/samples") for k in logged.history_keys)
    assert any(k.startswith("eval/pareto") for k in logged.history_keys)
    assert any(kind == "policy" for _, kind in logged.artifacts)
    images = list((trained_run / "wandb").rglob("media/images/eval/*.png"))
    assert len(images) >= 2


def test_exported_policy_acts_like_the_sb3_model(trained_run: Path, tiny_digits_dir: Path) -> None:
    checkpoint = trained_run / "checkpoints"
    config = train_agent.load_config(trained_run / "config.yaml")
    venv = CacheScheduleVecEnv(4, config.env, pipe=MiniDiTPipeline.from_pretrained(tiny_digits_dir), seed=1)
    normalize = VecNormalize.load(str(checkpoint / NORMALIZATION_FILE), venv)
    # Frozen after the warm start: the cloned network keeps the feature scaling it was fitted with.
    assert normalize.training is False
    assert round(normalize.obs_rms.count) == 2 * 4 * 5  # budgets x demo samples x steps; PPO's 200 steps added none
    model = MaskablePPO.load(str(checkpoint / "model.zip"), device="cpu")
    policy = load_policy(trained_run / "policy.safetensors")

    rng = np.random.default_rng(0)
    low, high = venv.observation_space.low, venv.observation_space.high
    observations = rng.uniform(low, high, size=(100, len(low))).astype(np.float32)
    masks = np.ones((100, 2 * 3), dtype=bool)
    masks[::3, 2::3] = False  # no FORECAST in some rows
    expected, _ = model.predict(normalize.normalize_obs(observations), deterministic=True, action_masks=masks)
    np.testing.assert_array_equal(policy.act_numpy(observations, masks), expected)
    venv.close()


def test_resume_continues_the_same_run(trained_run: Path) -> None:
    before = read_state(trained_run / "checkpoints")
    assert before["num_timesteps"] == 200
    assert train_agent.main(["--resume", str(trained_run), "--set", "agent.total_timesteps=280"]) == 0
    after = read_state(trained_run / "checkpoints")
    assert after["num_timesteps"] >= 280
    assert after["wandb_run_id"] == before["wandb_run_id"]
    assert read_offline_run(trained_run / "wandb").run_ids == {before["wandb_run_id"]}
    assert after["evaluations"] == before["evaluations"] + 1
    assert train_agent.load_config(trained_run / "config.yaml").agent.total_timesteps == 280  # the override is kept


def test_a_run_folder_is_never_overwritten_or_resumed_with_another_setup(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    files = {path: path.read_bytes() for path in trained_run.rglob("*") if path.is_file()}
    assert train_agent.main(["--out", str(trained_run), "--set", "agent.total_timesteps=8"]) == 2
    assert f"continue it with --resume {trained_run}" in capsys.readouterr().err
    assert train_agent.main(["--resume", str(trained_run), "--set", "env.groups=4"]) == 2
    assert "env.groups cannot change when resuming" in capsys.readouterr().err
    assert train_agent.main(["--resume", str(trained_run), "--set", "agent.net_arch=[32]"]) == 2
    assert "agent.net_arch cannot change when resuming" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in trained_run.rglob("*") if path.is_file()} == files


def test_resume_without_a_checkpoint_and_bad_yaml_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "config.yaml").write_text("env: {}\n")
    assert train_agent.main(["--resume", str(tmp_path)]) == 2
    assert "no complete checkpoint yet" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("env:\n  groups: [4\n")
    assert train_agent.main(["--config", str(broken)]) == 2
    assert f"{broken} is not valid YAML at line" in capsys.readouterr().err
    taken = tmp_path / "a-file"
    taken.write_text("kept")
    for out in (taken, taken / "run"):  # the folder, or one of its parents, is a file
        assert train_agent.main(["--out", str(out), "--wandb-mode", "disabled"]) == 2
        assert f"{taken} is a file, not a folder" in capsys.readouterr().err
    assert taken.read_text() == "kept"


def test_config_errors_name_the_field(capsys: pytest.CaptureFixture) -> None:
    assert train_agent.main(["--set", "agent.learning_rat=0.1"]) == 2
    assert "agent.learning_rat" in capsys.readouterr().err
    assert train_agent.main(["--set", "env.budget_range=[0.5, 1.5]"]) == 2
    assert "budget_range" in capsys.readouterr().err
    assert train_agent.main(["--set", "agent.n_steps=ten"]) == 2
    assert "agent.n_steps" in capsys.readouterr().err


def test_another_model_on_the_default_config_samples_at_its_pipelines_own_setting(tmp_path: Path) -> None:
    """The default config's schedulers, step range and anchors are the shipped model's: with --model the run takes
    the pipeline's own scheduler and step count, and a --set still names any of them."""
    from envs.pipelines import call_defaults
    from envs.sampling import SamplingSetting
    from tests.tiny_pipelines import build_dit_pipeline

    folder = tmp_path / "dit"
    build_dit_pipeline().save_pretrained(folder)
    steps = call_defaults(str(folder))["num_inference_steps"]

    def config(*flags: str) -> Any:
        args = train_agent.parse_args(["--model", str(folder), *flags])
        overrides = [*args.set, *train_agent.flag_overrides(args, args.config)]
        fitted, _ = train_agent.fit_default_recipe(args.config, overrides)
        return train_agent.load_config(args.config, [*overrides, *fitted])

    plain = config()
    assert plain.env.scheduler_names == ["default"] and plain.env.steps_range == (steps, steps)
    assert plain.warm_start_settings() == [SamplingSetting("default", steps)] and plain.warm_start.sweeps_at == {}
    assert [(s.scheduler, s.steps) for s in plain.evaluation_settings()] == [("default", steps)]
    named = config("--set", "env.scheduler=[ddim, dpmsolver++]")
    assert named.env.scheduler_names == ["ddim", "dpmsolver++"]

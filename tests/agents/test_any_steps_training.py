"""Training across step counts and schedulers: a teacher per anchor setting, evaluation at every end, ranges in the
manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import train_agent
from agents.config import ConfigError, load_config
from envs.sampling import SamplingSetting
from policies import load_policy
from reporting.evaluation import trained_scheduler_notice, trained_steps_notice
from tests.agents.wandb_records import read_offline_run
from tests.digits_fixtures import ONE_SETTING_CONFIG, TINY_WARM_START

SETTINGS = {("ddim", 4), ("ddim", 6), ("dpmsolver++", 4), ("dpmsolver++", 6)}
TINY = [
    "env.num_inference_steps=[4, 6]",
    "env.scheduler=[ddim, dpmsolver++]",
    "env.groups=2",
    "env.features=[time, input_change, probe_change, compute_spent, budget, since_compute, forecast_gap, step_size, "
    "solver_order]",
    "agent.num_envs=2",
    "env.group_rollouts=2",
    "agent.n_steps=7",  # not a multiple of any episode length: rollouts end inside episodes
    "agent.batch_size=14",
    "agent.n_epochs=1",
    "agent.total_timesteps=28",
    "eval.every_timesteps=1000",
    "eval.num_samples=2",
    "eval.grid_samples=1",
    "eval.budgets=[0.5]",
    "checkpoint.every_timesteps=1000",
    *TINY_WARM_START,
    "warm_start.settings=[ddim_6, dpmsolver++_4]",
]


@pytest.fixture(scope="module")
def any_steps_run(tiny_digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("any-steps")
    argv = [item for override in [f"env.model={tiny_digits_dir}", *TINY] for item in ("--set", override)]
    config = ["--config", str(ONE_SETTING_CONFIG)]
    assert train_agent.main([*config, *argv, "--wandb-mode", "offline", "--out", str(run_dir)]) == 0
    return run_dir


def test_the_teacher_is_searched_at_every_anchor(any_steps_run: Path) -> None:
    teacher = json.loads((any_steps_run / "teacher-schedules.json").read_text())
    anchors = [(entry["scheduler"], entry["num_inference_steps"]) for entry in teacher["settings"]]
    assert anchors == [("ddim", 6), ("dpmsolver++", 4)]
    for entry in teacher["settings"]:
        assert set(entry["budgets"]) == {"0.4", "0.6"}
        for values in entry["budgets"].values():
            assert np.shape(values["schedule"]) == (entry["num_inference_steps"], 2)


def test_the_manifest_records_the_ranges_and_the_notices_follow_them(any_steps_run: Path) -> None:
    policy = load_policy(any_steps_run / "policy.safetensors")
    trained_on = policy.manifest["trained_on"]
    assert trained_on["num_inference_steps"] == [4, 6]
    assert trained_on["schedulers"] == ["DDIMScheduler", "DPMSolverMultistepScheduler"]
    assert policy.trained_steps_range == (4, 6)
    assert [trained_steps_notice(policy, steps) is None for steps in (3, 4, 5, 6, 7)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert trained_scheduler_notice(policy, "DPMSolverMultistepScheduler") is None
    assert "samples with EulerDiscreteScheduler" in trained_scheduler_notice(policy, "EulerDiscreteScheduler")


def test_evaluation_covers_both_ends_with_both_schedulers(any_steps_run: Path) -> None:
    history = json.loads((any_steps_run / "eval-history.json").read_text())
    for entry in history:
        points = entry["points"]
        assert {(p["scheduler"], p["num_inference_steps"]) for p in points} == SETTINGS
        overspend = np.mean([max(0.0, p["compute_fraction"] - p["budget"]) for p in points])
        assert entry["score"] == pytest.approx(np.mean([p["psnr"] for p in points]) - 100.0 * overspend)
    logged = read_offline_run(any_steps_run / "wandb").history_keys
    for scheduler, steps in SETTINGS:
        assert f"eval/{scheduler}_{steps}/budget_0.5/psnr" in logged
    assert "eval/score" in logged and "eval/budget_0.5/psnr" not in logged


def test_evaluation_settings_and_their_errors() -> None:
    fixed = load_config(None, ["env.num_inference_steps=30"])
    assert fixed.evaluation_settings() == [SamplingSetting("default", 30)]  # one setting: the old metric names
    assert fixed.warm_start_setting() == SamplingSetting("default", 30)
    ranged = load_config(None, [*TINY[:2], "eval.steps=[5]", "warm_start.scheduler=dpmsolver++"])
    assert ranged.evaluation_settings() == [SamplingSetting("ddim", 5), SamplingSetting("dpmsolver++", 5)]
    assert ranged.warm_start_setting() == SamplingSetting("dpmsolver++", 6)
    assert ranged.warm_start_settings() == [SamplingSetting("dpmsolver++", 6)]
    anchored = load_config(None, [*TINY[:2], "warm_start.settings=[ddim_6, dpmsolver++_4]"])
    assert anchored.warm_start_settings() == [SamplingSetting("ddim", 6), SamplingSetting("dpmsolver++", 4)]
    with pytest.raises(ConfigError, match="leave num_inference_steps and scheduler null"):
        load_config(None, [*TINY[:2], "warm_start.settings=[ddim_6]", "warm_start.num_inference_steps=6"])
    for override, field in [
        ("eval.steps=[1, 20]", r"eval\.steps"),
        ("eval.steps=[]", r"eval\.steps"),
        ("warm_start.scheduler=pndm", r"warm_start\.scheduler"),
        ("warm_start.num_inference_steps=1", r"warm_start\.num_inference_steps"),
        ("env.num_inference_steps=[50, 20]", r"env\.num_inference_steps"),
        ("env.scheduler=[ddim, pndm]", r"env\.scheduler"),
        ("warm_start.settings=[ddim]", r"warm_start\.settings"),
        ("warm_start.settings=[ddim_50, ddim_50]", r"warm_start\.settings"),
        ("warm_start.settings=[ddim_50]", r"warm_start\.settings: ddim_50 lies outside"),
        ("warm_start.sweeps_at={ddim_6: 0}", r"warm_start\.sweeps_at names \['ddim_6'\]"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [override])

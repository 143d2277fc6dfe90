"""Configs: the shipped YAML files validate, and the default one matches the documented dataclass defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_yaml_differs_from_the_dataclass_defaults_only_in_its_recipe() -> None:
    """The dataclasses default to one setting (any model); default.yaml is the shipped policy's any-setting recipe."""
    loaded = load_config(CONFIGS / "default.yaml").to_dict()
    defaults = TrainConfig().to_dict()
    changed = {
        f"{section}.{key}"
        for section, fields in loaded.items()
        for key, value in fields.items()
        if defaults[section][key] != value
    }
    assert changed == {
        "env.scheduler",
        "env.num_inference_steps",
        "env.features",
        "agent.total_timesteps",
        "warm_start.sweeps",
        "warm_start.epochs",
        "warm_start.label_smoothing",
        "warm_start.settings",
        "warm_start.sweeps_at",
        "eval.every_timesteps",
        "eval.steps",
        "wandb.tags",
    }


def test_flow_config_validates_and_differs_only_where_it_should() -> None:
    flow = load_config(CONFIGS / "mini-flow-digits.yaml")
    assert flow.env.model == "mini-flow-digits" and flow.env.steps_range == (20, 50)
    assert 28 in {s.steps for s in flow.warm_start_settings()} and 28 in flow.eval.steps  # the model's default
    default = load_config(CONFIGS / "default.yaml")
    assert flow.env.features == default.env.features


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("env.reward.psnr_cap=-1", "reward.psnr_cap"),
        ("env.budget_range=[0.0, 0.5]", "budget_range"),
        ("eval.budgets=[1.5]", "budgets"),
        ("agent.algorithm=sac", "algorithm"),
        ("env.train_seeds=[0, 3000000]", "train_seeds"),
        ("wandb.colour=red", "wandb.colour"),
        ("warm_start.sweeps=0", "sweeps"),
        ("warm_start.budgets=[0.0]", "budgets"),
        ("warm_start.workers=two", "warm_start.workers"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "default.yaml", [override])


def test_warm_start_without_budget_conditioning_takes_one_budget() -> None:
    with pytest.raises(ConfigError, match=r"warm_start\.budgets"):
        load_config(CONFIGS / "default.yaml", ["env.budget_conditioned=false"])
    config = load_config(CONFIGS / "default.yaml", ["env.budget_conditioned=false", "warm_start.budgets=[0.3]"])
    assert config.warm_start.budgets == [0.3]


def test_the_default_config_trains_one_policy_for_every_step_count_and_scheduler() -> None:
    config = load_config(CONFIGS / "default.yaml")
    assert config.env.steps_range == (20, 50)
    assert config.env.scheduler_names == ["ddim", "dpmsolver++"]
    assert {"step_size", "solver_order", "time_since_compute"} <= set(config.env.features)
    anchors = config.warm_start_settings()
    for scheduler in config.env.scheduler_names:  # each scheduler is shown to the policy at both ends of the range
        assert {20, 50} <= {a.steps for a in anchors if a.scheduler == scheduler}
    evaluated = {(s.scheduler, s.steps) for s in config.evaluation_settings()}
    assert {("ddim", 20), ("ddim", 30), ("ddim", 50), ("dpmsolver++", 20)} <= evaluated


def test_environment_shards_hold_whole_rollout_groups() -> None:
    """16 environments as 4 groups of 4 rollouts: 1, 2 or 4 shards (one per Ray worker) keep each group in one shard;
    3 workers would cut groups, and the error names the shard counts that fit."""
    grouped = ["env.group_rollouts=4"]
    for workers in (1, 2, 4):
        assert load_config(CONFIGS / "default.yaml", [*grouped, f"ray.workers={workers}"]).ray.shards == workers
    with pytest.raises(ConfigError, match=r"ray\.env_shards.*group_rollouts=4.*one of \[1, 2, 4\]"):
        load_config(CONFIGS / "default.yaml", [*grouped, "ray.workers=3"])
    config = load_config(CONFIGS / "default.yaml", [*grouped, "ray.workers=3", "ray.env_shards=2"])  # shards apart
    assert (config.ray.workers, config.ray.shards) == (3, 2)
    with pytest.raises(ConfigError, match=r"one of \[1, 2\]"):
        load_config(CONFIGS / "default.yaml", [*grouped, "agent.num_envs=8", "ray.env_shards=4"])


def test_the_default_recipe_follows_an_environment_the_overrides_change() -> None:
    """Anchors and validation step counts outside a --set environment are dropped; named fields stay as written."""
    from train_agent import DEFAULT_CONFIG, fit_default_recipe

    overrides = ["env.num_inference_steps=[20, 30]", "env.scheduler=ddim"]
    fitted, notices = fit_default_recipe(DEFAULT_CONFIG, overrides)
    config = load_config(DEFAULT_CONFIG, [*overrides, *fitted])
    assert config.warm_start.settings == ["ddim_30", "ddim_20"] and config.warm_start.sweeps_at == {}
    assert config.eval.steps == [20, 30] and len(notices) == 2

    fitted, _ = fit_default_recipe(DEFAULT_CONFIG, ["env.num_inference_steps=5"])
    single = load_config(DEFAULT_CONFIG, ["env.num_inference_steps=5", *fitted])
    assert single.warm_start.settings is None and single.warm_start_settings()[0].steps == 5
    assert single.eval.steps is None

    named = ["env.num_inference_steps=5", "warm_start.settings=[ddim_50]"]
    with pytest.raises(ConfigError, match="ddim_50 lies outside"):
        fit_default_recipe(DEFAULT_CONFIG, named)
    assert fit_default_recipe(CONFIGS / "mini-flow-digits.yaml", ["env.num_inference_steps=5"]) == ([], [])
    assert fit_default_recipe(DEFAULT_CONFIG, []) == ([], [])


def test_num_envs_must_hold_whole_groups() -> None:
    with pytest.raises(ConfigError, match="agent.num_envs=6 is not a multiple of env.group_rollouts=4"):
        load_config(CONFIGS / "default.yaml", ["agent.num_envs=6", "env.group_rollouts=4"])

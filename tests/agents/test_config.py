"""Configs: the shipped YAML files validate, and the default one matches the documented dataclass defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_yaml_matches_dataclass_defaults() -> None:
    loaded = load_config(CONFIGS / "default.yaml").to_dict()
    defaults = TrainConfig().to_dict()
    loaded["wandb"]["tags"] = defaults["wandb"]["tags"]
    assert loaded == defaults


def test_flow_config_validates_and_differs_only_where_it_should() -> None:
    flow = load_config(CONFIGS / "mini-flow-digits.yaml")
    assert flow.env.model == "mini-flow-digits" and flow.env.num_inference_steps == 28
    assert flow.agent.n_steps % flow.env.num_inference_steps == 0


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


def test_any_steps_config_differs_from_the_default_only_in_steps_schedulers_and_what_they_need() -> None:
    ranged, default = (
        load_config(CONFIGS / "any-steps.yaml").to_dict(),
        load_config(CONFIGS / "default.yaml").to_dict(),
    )
    assert ranged["env"]["num_inference_steps"] == [20, 50]
    assert ranged["env"]["scheduler"] == ["ddim", "dpmsolver++"]
    assert {"step_size", "time_since_compute"} <= set(ranged["env"]["features"])
    changed = {
        f"{section}.{key}"
        for section, fields in ranged.items()
        for key, value in fields.items()
        if default[section][key] != value
    }
    assert changed == {
        "env.num_inference_steps",
        "env.scheduler",
        "env.features",
        "warm_start.num_inference_steps",
        "warm_start.scheduler",
        "eval.steps",
        "wandb.tags",
    }

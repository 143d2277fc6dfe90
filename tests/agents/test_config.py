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
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "default.yaml", [override])

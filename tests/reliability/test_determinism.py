"""The same seed and config give the same exported policy actions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import train_agent
from policies import load_policy
from tests.digits_fixtures import ONE_SETTING_CONFIG, TINY_WARM_START

SETTINGS = [
    "env.num_inference_steps=4",
    "env.groups=2",
    "agent.num_envs=4",
    "agent.n_steps=8",
    "agent.batch_size=16",
    "agent.n_epochs=2",
    "agent.total_timesteps=96",
    "eval.every_timesteps=96",
    "eval.num_samples=2",
    "eval.grid_samples=0",
    "checkpoint.every_timesteps=96",
    *TINY_WARM_START,
]


def train(model_dir: Path, out: Path, seed: int) -> Path:
    settings = [f"env.model={model_dir}", f"agent.seed={seed}", *SETTINGS]
    argv = [item for s in settings for item in ("--set", s)]
    config = ["--config", str(ONE_SETTING_CONFIG)]
    assert train_agent.main([*config, *argv, "--wandb-mode", "disabled", "--out", str(out)]) == 0
    return out / "policy.safetensors"


def test_same_seed_same_policy_actions(tiny_digits_dir: Path, tmp_path: Path) -> None:
    first = load_policy(train(tiny_digits_dir, tmp_path / "a", seed=3))
    second = load_policy(train(tiny_digits_dir, tmp_path / "b", seed=3))
    other = load_policy(train(tiny_digits_dir, tmp_path / "c", seed=4))
    features = np.random.default_rng(0).uniform(-1, 1, size=(100, len(first.feature_names))).astype(np.float32)
    np.testing.assert_array_equal(first.act_numpy(features), second.act_numpy(features))
    for a, b in zip(first.network.state_dict().values(), second.network.state_dict().values(), strict=True):
        assert bool((a == b).all())
    assert any(
        not bool((a == b).all())
        for a, b in zip(first.network.state_dict().values(), other.network.state_dict().values(), strict=True)
    )

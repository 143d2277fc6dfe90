"""Warm start: teacher schedules recorded in the training environment and cloned into a MaskablePPO policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecNormalize

import runtime
from agents.warm_start import behaviour_clone, record_demonstrations
from envs import CacheScheduleVecEnv

COMPUTE, FORECAST = int(runtime.Action.COMPUTE), int(runtime.Action.FORECAST)
STEPS, GROUPS = 6, 2


def schedules() -> dict[float, np.ndarray]:
    sparse = np.full((STEPS, GROUPS), FORECAST)
    sparse[[0, 3]] = COMPUTE
    staggered = np.full((STEPS, GROUPS), FORECAST)
    staggered[0] = COMPUTE
    staggered[[1, 2, 4], 0] = COMPUTE
    staggered[[2, 3, 5], 1] = COMPUTE
    return {0.35: sparse, 0.7: staggered}


@pytest.fixture(scope="module")
def setup(tiny_digits_dir: Path):
    config = {
        "model": str(tiny_digits_dir),
        "num_inference_steps": STEPS,
        "groups": GROUPS,
        "probe_blocks": 0,
    }
    venv = CacheScheduleVecEnv(4, config, seed=0)
    env = VecNormalize(venv, norm_obs=True, norm_reward=False)
    demonstrations = record_demonstrations(venv.episodes, schedules(), [0, 1, 2, 3], [10, 11, 12, 13])
    yield venv, env, demonstrations
    venv.close()


def test_demonstrations_hold_what_the_engine_executed(setup) -> None:
    _, _, demonstrations = setup
    rows = len(schedules()) * 4 * STEPS
    assert demonstrations.observations.shape[0] == rows
    assert demonstrations.actions.shape == (rows, GROUPS)
    assert demonstrations.masks.shape == (rows, GROUPS * runtime.NUM_ACTIONS)
    first_budget = demonstrations.actions[: 4 * STEPS].reshape(4, STEPS, GROUPS)
    expected = schedules()[0.35].copy()
    expected[1:3] = int(runtime.Action.REUSE)  # one computed step: a forecast is not possible yet, the engine reuses
    for sample in first_budget:
        np.testing.assert_array_equal(sample, expected)
    assert demonstrations.compute_fraction[0.35] < demonstrations.compute_fraction[0.7]
    assert demonstrations.psnr[0.35] < demonstrations.psnr[0.7]
    returns = demonstrations.returns.reshape(-1, STEPS)
    assert np.isfinite(returns).all()


def test_cloned_policy_plays_the_teacher(setup) -> None:
    _, env, demonstrations = setup
    model = MaskablePPO("MlpPolicy", env, n_steps=STEPS, batch_size=24, seed=0, device="cpu")
    untrained = model.policy.state_dict()["action_net.weight"].clone()
    metrics = behaviour_clone(model, demonstrations, epochs=150, batch_size=32, learning_rate=3e-3)
    assert metrics["accuracy"] >= 0.99, metrics
    assert not bool((model.policy.state_dict()["action_net.weight"] == untrained).all())
    observations = env.normalize_obs(demonstrations.observations)
    masks = demonstrations.masks.astype(bool)
    predicted, _ = model.predict(observations, deterministic=True, action_masks=masks)
    assert (predicted == demonstrations.actions).mean() >= 0.99


def test_without_budget_conditioning_the_budget_is_not_shown(setup) -> None:
    venv, _, _ = setup
    schedule = {0.35: schedules()[0.35]}
    shown = record_demonstrations(venv.episodes, schedule, [0, 1, 2, 3], [10, 11, 12, 13])
    hidden = record_demonstrations(venv.episodes, schedule, [0, 1, 2, 3], [10, 11, 12, 13], budget_conditioned=False)
    column = list(venv.episodes.feature_names).index("budget")
    assert np.allclose(shown.observations[:, column], 0.35)
    assert np.allclose(hidden.observations[:, column], 1.0)
    np.testing.assert_array_equal(shown.actions, hidden.actions)

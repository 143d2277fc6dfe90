"""Export and load of learned policies and static schedules: SB3 parity, no SB3 at load time, engine use."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

import policies
import runtime
from policies import (
    LearnedPolicy,
    PolicyFormatError,
    StaticSchedulePolicy,
    export_policy,
    export_schedule,
    load_policy,
    load_schedule,
)
from policies.export import from_sb3, read_manifest, training_config_sha256
from policies.learned import ObservationNormalization
from policies.schedule import schedule_from_actions
from runtime import Action, Observation
from tests.runtime.toy_models import denoise_dit, tiny_dit

GROUPS = 3
FEATURES = len(runtime.feature_names(GROUPS))
REPO = Path(__file__).resolve().parents[2]


class FeatureEnv(gym.Env):
    """A stand-in for the caching environment with the same spaces and no model behind it.

    Action Space:
        ``MultiDiscrete([3] * groups)``: COMPUTE, REUSE or FORECAST per block group.

    Observation Space:
        ``Box(F,)`` float32, ``F = len(runtime.feature_names(groups))``, drawn from N(2, 3) so that normalisation
        matters.

    Rewards:
        Minus the number of COMPUTE actions, plus one per group whose action matches the sign of its feature.

    Episode End:
        After 16 steps.

    Arguments:
        groups: Block groups.
        masked: Whether :meth:`action_masks` forbids actions at random (COMPUTE is always allowed).
    """

    def __init__(self, groups: int = GROUPS, masked: bool = False) -> None:
        self.groups, self.masked = groups, masked
        features = len(runtime.feature_names(groups))
        self.observation_space = gym.spaces.Box(-20.0, 20.0, (features,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([3] * groups)
        self.steps = 0
        self.observation = np.zeros(features, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.steps = 0
        return self._draw(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.steps += 1
        signs = (self.observation[5 : 5 + self.groups] > 2.0).astype(int)
        reward = float(-(action == 0).sum() + (action == signs + 1).sum())
        return self._draw(), reward, self.steps >= 16, False, {}

    def action_masks(self) -> np.ndarray:
        return random_masks(self.np_random, 1, self.groups).reshape(-1) if self.masked else np.ones(3 * self.groups)

    def _draw(self) -> np.ndarray:
        self.observation = self.np_random.normal(2.0, 3.0, self.observation_space.shape).astype(np.float32)
        return self.observation


def random_masks(rng: np.random.Generator, samples: int, groups: int) -> np.ndarray:
    """``(samples, groups, 3)`` masks with COMPUTE always possible, REUSE and FORECAST at random."""
    masks = rng.random((samples, groups, 3)) < 0.6
    masks[..., Action.COMPUTE] = True
    return masks


def sample_observations(count: int = 100, seed: int = 1) -> np.ndarray:
    """Observations spread like the environment's."""
    return np.random.default_rng(seed).normal(2.0, 3.0, (count, FEATURES)).astype(np.float32)


def hand_policy(bias: list[float], groups: int = GROUPS, engine_groups: list[float] | None = None) -> LearnedPolicy:
    """A policy whose logits are ``bias`` (one chunk of 3, repeated per group), whatever the features."""
    features = len(runtime.feature_names(groups))
    head = torch.nn.Linear(features, 3 * groups)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.tensor(bias * groups))
    return LearnedPolicy(
        [],
        head,
        feature_names=runtime.feature_names(groups),
        engine_options={"groups": engine_groups or groups, "probe_blocks": 1, "forecast_order": 1},
    )


# -- SB3 parity ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("normalize", "policy_kwargs"),
    [
        (True, {}),
        (False, {"share_features_extractor": False, "activation_fn": torch.nn.ReLU, "net_arch": [32]}),
    ],
    ids=["vecnormalize-tanh", "raw-relu-separate-extractor"],
)
def test_ppo_export_load_matches_predict(tmp_path: Path, normalize: bool, policy_kwargs: dict[str, Any]) -> None:
    env = DummyVecEnv([FeatureEnv])
    if normalize:
        env = VecNormalize(env, norm_reward=False, clip_obs=5.0)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=2, policy_kwargs=policy_kwargs, seed=0)
    model.learn(256)
    config = {"algorithm": "ppo", "steps": 256}
    policy = from_sb3(
        model, env if normalize else None, model_family="dit", scheduler="DDIMScheduler", training_config=config
    )
    path = export_policy(tmp_path / "policy.safetensors", policy)
    loaded = load_policy(path)

    observations = sample_observations()
    model_input = env.normalize_obs(observations) if normalize else observations
    expected, _ = model.predict(model_input, deterministic=True)
    assert isinstance(loaded, LearnedPolicy)
    np.testing.assert_array_equal(loaded.act_numpy(observations), expected)
    np.testing.assert_array_equal(loaded.act_numpy(observations[0]), expected[0])
    assert len(np.unique(expected)) > 1, "a degenerate policy would not test the argmax layout"
    assert (loaded.normalization is not None) == normalize
    assert [path.name for path in tmp_path.iterdir()] == ["policy.safetensors"], "no temporary file left behind"

    manifest = read_manifest(path)
    assert manifest["format_version"] == 1 and manifest["kind"] == "policy"
    assert manifest["feature_names"] == list(runtime.feature_names(GROUPS))
    assert manifest["num_groups"] == GROUPS and loaded.num_groups == GROUPS
    assert manifest["engine_options"] == {"groups": GROUPS, "probe_blocks": 1, "forecast_order": 1}
    assert manifest["model_family"] == "dit" and manifest["scheduler"] == "DDIMScheduler"
    assert manifest["training_config_sha256"] == training_config_sha256(config)
    assert manifest["normalization"]["enabled"] == normalize
    assert manifest["created_with"]["stable-baselines3"] and manifest["created_with"]["torch"]
    assert manifest["layers"][-1] == {
        "name": "action_head",
        "in_features": 64 if normalize else 32,
        "out_features": 3 * GROUPS,
        "activation": None,
    }
    assert {layer["activation"] for layer in manifest["layers"][:-1]} == {"tanh" if normalize else "relu"}


def test_maskable_ppo_export_load_matches_predict_with_masks(tmp_path: Path) -> None:
    model = MaskablePPO("MlpPolicy", FeatureEnv(masked=True), n_steps=64, batch_size=64, n_epochs=2, seed=0)
    model.learn(128)
    path = export_policy(tmp_path / "maskable.safetensors", from_sb3(model))
    loaded = load_policy(path)

    observations = sample_observations(seed=2)
    masks = random_masks(np.random.default_rng(3), len(observations), GROUPS)
    expected, _ = model.predict(observations, action_masks=masks.reshape(len(observations), -1), deterministic=True)
    np.testing.assert_array_equal(loaded.act_numpy(observations, masks), expected)
    observation = Observation.from_features(
        torch.from_numpy(observations),
        torch.from_numpy(masks),
        step_index=3,
        time=0.5,
        names=runtime.feature_names(GROUPS),
    )
    actions = loaded.act(observation)
    assert actions.dtype == torch.int64 and actions.shape == (len(observations), GROUPS)
    np.testing.assert_array_equal(actions.numpy(), expected)
    assert bool(torch.gather(observation.action_mask, 2, actions[..., None]).all()), "only possible actions"
    assert read_manifest(path)["algorithm"] == "MaskablePPO"


def test_load_policy_never_imports_stable_baselines3(tmp_path: Path) -> None:
    path = export_policy(tmp_path / "policy.safetensors", hand_policy([0.0, 1.0, 0.5]))
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from policies import load_policy\n"
        f"policy = load_policy({str(path)!r})\n"
        f"assert policy.act_numpy(np.zeros((2, {FEATURES}), np.float32)).tolist() == [[1] * {GROUPS}] * 2\n"
        "leaked = [name for name in ('stable_baselines3', 'sb3_contrib') if name in sys.modules]\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


class TinyExtractor(BaseFeaturesExtractor):
    """A features extractor other than ``FlattenExtractor``."""

    def __init__(self, observation_space: gym.spaces.Box) -> None:
        super().__init__(observation_space, features_dim=4)
        self.linear = torch.nn.Linear(observation_space.shape[0], 4)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(observations)


class DictEnv(FeatureEnv):
    """:class:`FeatureEnv` with a ``Dict`` observation space."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Dict({"features": self.observation_space})


class DiscreteEnv(FeatureEnv):
    """:class:`FeatureEnv` with one ``Discrete(3)`` action instead of ``MultiDiscrete``."""

    def __init__(self) -> None:
        super().__init__()
        self.action_space = gym.spaces.Discrete(3)


@pytest.mark.parametrize(
    ("make_model", "message"),
    [
        (
            lambda: PPO("MlpPolicy", FeatureEnv(), policy_kwargs={"features_extractor_class": TinyExtractor}),
            "Features extractor TinyExtractor is not supported",
        ),
        (lambda: PPO("MultiInputPolicy", DictEnv()), "Observation space Dict"),
        (lambda: PPO("MlpPolicy", DiscreteEnv()), "Action space Discrete"),
        (
            lambda: PPO("MlpPolicy", FeatureEnv(), policy_kwargs={"activation_fn": torch.nn.Softplus}),
            "Activation Softplus",
        ),
        (lambda: PPO("MlpPolicy", VecNormalize(DummyVecEnv([FeatureEnv]))), "pass it as vec_normalize="),
        (lambda: PPO("MlpPolicy", VecMonitor(VecNormalize(DummyVecEnv([FeatureEnv])))), "pass it as vec_normalize="),
    ],
    ids=[
        "custom-extractor",
        "dict-observations",
        "discrete-actions",
        "activation",
        "forgotten-vecnormalize",
        "forgotten-wrapped-vecnormalize",
    ],
)
def test_from_sb3_rejects_unsupported_models(make_model: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_sb3(make_model())


# -- the policy on its own ----------------------------------------------------------------------------------------


def test_masked_actions_take_the_best_possible_logit() -> None:
    observation = sample_observations(2)
    masks = np.ones((2, GROUPS, 3), bool)
    masks[:, :, Action.FORECAST] = False
    masks[1, :, Action.REUSE] = False
    np.testing.assert_array_equal(hand_policy([0.0, 1.0, 2.0]).act_numpy(observation), [[2] * GROUPS] * 2)
    np.testing.assert_array_equal(hand_policy([0.0, 1.0, 2.0]).act_numpy(observation, masks), [[1] * GROUPS, [0] * 3])
    np.testing.assert_array_equal(hand_policy([1.0, 0.0, 2.0]).act_numpy(observation, masks), [[0] * GROUPS] * 2)


def test_normalization_is_vecnormalize_formula() -> None:
    normalization = ObservationNormalization(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25]), 3.0, 1e-8)
    out = normalization(torch.tensor([[3.0, 10.0], [1.0, -2.5]]))
    expected = np.clip(
        (np.array([[3.0, 10.0], [1.0, -2.5]]) - [1.0, -2.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-8), -3.0, 3.0
    )
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)


def test_act_rejects_observations_of_other_features() -> None:
    observation = Observation.from_features(
        torch.zeros(1, FEATURES),
        torch.ones(1, GROUPS, 3, dtype=torch.bool),
        step_index=0,
        time=1.0,
        names=tuple(reversed(runtime.feature_names(GROUPS))),
    )
    with pytest.raises(ValueError, match="trained on"):
        hand_policy([0.0, 1.0, 0.0]).act(observation)


# -- static schedules ---------------------------------------------------------------------------------------------


def test_schedule_from_actions_takes_the_mode_and_breaks_ties_toward_compute() -> None:
    steps = [
        np.array([[0, 1], [0, 2], [1, 2]]),
        np.array([[1, 2], [2, 1]]),  # ties: 1 vs 2 -> 1, 2 vs 1 -> 1
        torch.tensor([[2, 2], [2, 0], [1, 0], [2, 0]]),
    ]
    assert schedule_from_actions(steps).tolist() == [[0, 2], [1, 1], [2, 0]]
    with pytest.raises(ValueError, match="groups"):
        schedule_from_actions([np.zeros((2, 2)), np.zeros((2, 3))])


def test_schedule_export_load_and_step_clamping(tmp_path: Path) -> None:
    table = torch.tensor([[0, 0], [1, 2], [2, 1]])
    path = export_schedule(
        tmp_path / "schedule.safetensors",
        table,
        engine_options={"groups": [0.5], "probe_blocks": 1, "forecast_order": 2},
        model_family="dit",
    )
    for loaded in (load_schedule(path), load_policy(path)):
        assert isinstance(loaded, StaticSchedulePolicy)
        assert torch.equal(loaded.schedule, table) and loaded.forecast_order == 2
        assert loaded.engine_options == {"groups": [0.5], "probe_blocks": 1, "forecast_order": 2}
    manifest = read_manifest(path)
    assert manifest["kind"] == "schedule" and manifest["num_steps"] == 3 and manifest["model_family"] == "dit"
    mask = torch.ones(4, 2, 3, dtype=torch.bool)
    for step, row in [(0, [0, 0]), (1, [1, 2]), (2, [2, 1]), (7, [2, 1])]:
        observation = Observation.from_features(torch.zeros(4, FEATURES), mask, step_index=step, time=0.5)
        assert loaded.act(observation).tolist() == [row] * 4
    with pytest.raises(PolicyFormatError, match="not a schedule"):
        load_schedule(export_policy(tmp_path / "policy.safetensors", hand_policy([0.0, 1.0, 0.0])))


# -- with the engine ----------------------------------------------------------------------------------------------


def test_enable_cache_with_an_exported_policy_file(tmp_path: Path) -> None:
    policy = hand_policy([0.0, 2.0, 1.0], groups=2, engine_groups=[0.5])  # REUSE where possible, else COMPUTE
    path = export_policy(tmp_path / "reuse.safetensors", policy)
    model = tiny_dit(depth=4)
    engine = policies.enable_cache(model, path)
    assert isinstance(engine.policy, LearnedPolicy) and engine.num_groups == 2
    assert engine.groups == [[1, 2], [3]], "the exported depth fractions were used"
    denoise_dit(model, [3, 7], steps=4)
    summary = engine.summary()
    assert summary["decisions"] == 4
    assert summary["actions"] == {"compute": 2 * 2, "reuse": 3 * 2 * 2, "forecast": 0}
    runtime.disable_cache(model)

    schedule = export_schedule(tmp_path / "schedule.safetensors", torch.tensor([[0, 0], [1, 0], [0, 2]]))
    engine = policies.enable_cache(model, schedule)
    denoise_dit(model, [3], steps=4)
    assert engine.summary()["actions"] == {"compute": 5, "reuse": 1, "forecast": 2}
    runtime.disable_cache(model)


def test_enable_cache_rejects_a_policy_trained_on_other_features(tmp_path: Path) -> None:
    policy = hand_policy([0.0, 1.0, 0.0])
    names = list(policy.feature_names)
    names[names.index("budget")] = "noise_level"
    renamed = LearnedPolicy([], policy.action_head, feature_names=names, engine_options=policy.engine_options)
    path = export_policy(tmp_path / "renamed.safetensors", renamed)
    with pytest.raises(ValueError, match="trained on observation features .*noise_level"):
        policies.enable_cache(tiny_dit(depth=4), path)


def test_a_budget_outside_the_trained_range_warns(tmp_path: Path) -> None:
    policy = hand_policy([0.0, 1.0, 0.0], groups=2)
    policy.manifest["trained_on"] = {"budget_range": [0.15, 0.5], "num_inference_steps": 50}
    loaded = load_policy(export_policy(tmp_path / "ranged.safetensors", policy))
    assert loaded.budget_range == (0.15, 0.5)
    assert loaded.manifest["trained_on"]["num_inference_steps"] == 50
    assert loaded.trained_steps == 50
    bare = hand_policy([0.0, 1.0, 0.0])
    assert bare.budget_range is None and bare.trained_steps is None  # files without the record: no range, no warning
    bare.manifest["trained_on"] = {"num_inference_steps": "50"}
    assert bare.trained_steps is None  # a malformed record is ignored
    model = tiny_dit(depth=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = runtime.enable_cache(model, loaded, budget=0.3)
        engine.set_budget(torch.tensor([0.15, 0.5]))
    with pytest.warns(UserWarning, match=r"budget 0.05 lies outside .* trained on \(0.15..0.5\)"):
        engine.set_budget(0.05)
    with pytest.warns(UserWarning, match=r"budget 0.2..0.9 lies outside"):
        engine.set_budget(torch.tensor([0.2, 0.9]))
    runtime.disable_cache(model)
    with pytest.warns(UserWarning, match="budget 0.8 lies outside"):
        runtime.enable_cache(model, loaded, budget=0.8)
    runtime.disable_cache(model)


def test_step_ranges_and_schedulers_in_the_manifest_drive_the_notices(tmp_path: Path) -> None:
    from reporting.evaluation import trained_scheduler_notice, trained_steps_notice

    policy = hand_policy([0.0, 1.0, 0.0], groups=2)
    policy.manifest["trained_on"] = {
        "budget_range": [0.15, 0.5],
        "num_inference_steps": [20, 50],
        "schedulers": ["DDIMScheduler", "DPMSolverMultistepScheduler"],
    }
    loaded = load_policy(export_policy(tmp_path / "any-steps.safetensors", policy))
    assert loaded.trained_steps_range == (20, 50)
    assert loaded.trained_steps is None  # a range is not one count
    assert loaded.trained_schedulers == ("DDIMScheduler", "DPMSolverMultistepScheduler")
    for steps in (20, 33, 50):
        assert trained_steps_notice(loaded, steps) is None
    assert "trained with 20 to 50 denoising steps and this run uses 12" in trained_steps_notice(loaded, 12)
    assert "--steps 50 is the nearest" in trained_steps_notice(loaded, 80)
    assert trained_scheduler_notice(loaded, "DPMSolverMultistepScheduler") is None
    notice = trained_scheduler_notice(loaded, "EulerDiscreteScheduler")
    assert "trained with DDIMScheduler, DPMSolverMultistepScheduler and this run samples with Euler" in notice

    old = hand_policy([0.0, 1.0, 0.0], groups=2)  # a manifest of before ranges: one count, one scheduler
    old.manifest.update(scheduler="DDIMScheduler", trained_on={"num_inference_steps": 50})
    assert old.trained_steps_range == (50, 50) and old.trained_steps == 50
    assert trained_steps_notice(old, 50) is None and "trained with 50 denoising steps" in trained_steps_notice(old, 20)
    assert trained_scheduler_notice(old, "DDIMScheduler") is None
    assert "samples with EulerDiscreteScheduler" in trained_scheduler_notice(old, "EulerDiscreteScheduler")
    for malformed in ([50, 20], [0, 5], "20-50", [20.0, 50]):
        old.manifest["trained_on"] = {"num_inference_steps": malformed}
        assert old.trained_steps_range is None and trained_steps_notice(old, 7) is None
    assert trained_scheduler_notice(hand_policy([0.0, 1.0, 0.0]), "DDIMScheduler") is None  # no record: no notice

"""Extracting the actor of a trained Stable-Baselines3 model as a plain-torch :class:`LearnedPolicy`."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from runtime import EngineOptions
from runtime import feature_names as runtime_feature_names

from .learned import (
    ACTIVATIONS,
    LearnedPolicy,
    ObservationNormalization,
    training_config_sha256,
)


def from_sb3(
    model: Any,
    vec_normalize: Any | None = None,
    *,
    feature_names: Sequence[str] | None = None,
    engine_options: EngineOptions | Mapping[str, Any] | None = None,
    budget_conditioned: bool = False,
    model_family: str | None = None,
    scheduler: str | None = None,
    training_config: Mapping[str, Any] | str | bytes | None = None,
    trained_on: Mapping[str, Any] | None = None,
) -> LearnedPolicy:
    """Extracts the actor of a trained SB3 ``PPO`` / ``A2C`` or sb3-contrib ``MaskablePPO`` with ``MlpPolicy``.

    The model must observe a flat ``Box(F,)`` (SB3's default ``FlattenExtractor``, shared or not) and act in
    ``MultiDiscrete([3] * groups)``. The actor is ``policy.mlp_extractor.policy_net`` then ``policy.action_net``.

    Args:
        model: The trained model.
        vec_normalize: The ``VecNormalize`` wrapper it was trained in, whose observation statistics, ``clip_obs``
            and ``epsilon`` the policy applies; ``None`` if observations were not normalised.
        feature_names: Observation feature names (default: ``runtime.feature_names(groups)``).
        engine_options: ``groups``, ``probe_blocks`` and ``forecast_order`` used in training (default: ``groups``
            equal groups, one probe block, order 1).
        budget_conditioned: Whether training varied the ``budget`` feature.
        model_family: Model family it was trained on, e.g. ``"dit"``.
        scheduler: Noise scheduler class it was trained with.
        training_config: The training config, hashed into the manifest.
        trained_on: What training covered, kept in the manifest: ``budget_range`` ``[low, high]``,
            ``num_inference_steps`` (a count or ``[low, high]``) and ``schedulers`` (class names); the engine warns
            when a budget outside that range is asked for.

    Returns:
        The policy, ready for ``policies.export_policy`` or ``runtime.enable_cache``.

    Raises:
        ValueError: If the model's spaces, features extractor or networks are not supported, naming what to change.
    """
    import gymnasium
    import stable_baselines3
    from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
    from stable_baselines3.common.vec_env import unwrap_vec_normalize

    policy, algorithm = getattr(model, "policy", model), type(model).__name__
    if not all(hasattr(policy, name) for name in ("mlp_extractor", "action_net", "features_extractor")):
        raise ValueError(
            f"{algorithm} is not supported: from_sb3 reads actor-critic MlpPolicy models (PPO, A2C, MaskablePPO)."
        )
    if hasattr(policy, "lstm_actor"):
        raise ValueError(f"{algorithm} is recurrent; exported policies are feed-forward: train PPO or MaskablePPO.")
    observation_space, action_space = policy.observation_space, policy.action_space
    if not isinstance(observation_space, gymnasium.spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"Observation space {observation_space} is not supported: a policy reads a flat Box(F,) "
            "feature vector (no Dict, image or multi-dimensional observations)."
        )
    nvec = np.asarray(getattr(action_space, "nvec", []))
    if not isinstance(action_space, gymnasium.spaces.MultiDiscrete) or nvec.ndim != 1 or not (nvec == 3).all():
        raise ValueError(
            f"Action space {action_space} is not supported: use MultiDiscrete([3] * groups), one "
            "COMPUTE / REUSE / FORECAST choice per block group."
        )
    extractor = getattr(policy, "pi_features_extractor", policy.features_extractor)
    if type(extractor) is not FlattenExtractor:
        raise ValueError(
            f"Features extractor {type(extractor).__name__} is not supported: train with "
            "'MlpPolicy' and the default FlattenExtractor."
        )
    if not isinstance(policy.mlp_extractor, MlpExtractor) or not isinstance(policy.action_net, nn.Linear):
        raise ValueError(f"{algorithm}'s policy is not the standard MlpExtractor + Linear action_net of 'MlpPolicy'.")
    hidden, activations = _split_policy_net(policy.mlp_extractor.policy_net)
    num_groups = len(nvec)
    training_env = getattr(model, "get_env", lambda: None)()
    if vec_normalize is None and training_env is not None and unwrap_vec_normalize(training_env) is not None:
        raise ValueError(
            "The model's environment is (or wraps) a VecNormalize: pass it as vec_normalize= so that the policy "
            "normalises observations as in training."
        )
    normalization = None
    if vec_normalize is not None and getattr(vec_normalize, "norm_obs", True):
        statistics = vec_normalize.obs_rms
        if isinstance(statistics, dict):
            raise ValueError("vec_normalize holds per-key (Dict) statistics; a policy reads one flat Box(F,).")
        normalization = ObservationNormalization(
            statistics.mean, statistics.var, vec_normalize.clip_obs, vec_normalize.epsilon
        )
    created_with = {"stable-baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__}
    if type(model).__module__.startswith("sb3_contrib"):
        created_with["sb3-contrib"] = importlib.metadata.version("sb3-contrib")
    return LearnedPolicy(
        hidden,
        policy.action_net,
        activation=activations,
        feature_names=feature_names if feature_names is not None else runtime_feature_names(num_groups),
        engine_options=engine_options,
        normalization=normalization,
        budget_conditioned=budget_conditioned,
        manifest={
            "algorithm": algorithm,
            "model_family": model_family,
            "scheduler": scheduler,
            "training_config_sha256": training_config_sha256(training_config),
            "created_with": created_with,
            **({"trained_on": dict(trained_on)} if trained_on is not None else {}),
        },
    )


def _split_policy_net(net: nn.Module) -> tuple[list[nn.Linear], list[str]]:
    """Splits SB3's ``policy_net`` (``Linear, activation, ...``) into its layers and activation names."""
    modules = list(net) if isinstance(net, nn.Sequential) else [net]
    hidden, activations = modules[0::2], modules[1::2]
    names = []
    for module in activations:
        name = next((n for n, kind in ACTIVATIONS.items() if type(module) is kind), None)
        defaults = ACTIVATIONS[name]() if name is not None else None
        same = defaults is not None and all(
            getattr(module, a, None) == getattr(defaults, a, None) for a in ("alpha", "negative_slope", "approximate")
        )
        if not same:
            raise ValueError(
                f"Activation {module} is not supported: use one of {sorted(ACTIVATIONS)} (default "
                "arguments) as activation_fn."
            )
        names.append(name)
    if len(hidden) != len(names) or not all(isinstance(layer, nn.Linear) for layer in hidden):
        raise ValueError(f"policy_net {net} is not a stack of Linear layers each followed by an activation.")
    return hidden, names

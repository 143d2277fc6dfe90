"""Policies loaded from exported files: a trained MLP actor (:class:`LearnedPolicy`) and a fixed per-step schedule.

The actor mirrors what Stable-Baselines3's ``MlpPolicy`` computes for a ``MultiDiscrete([3] * groups)`` action space,
in plain torch: optional ``VecNormalize`` observation normalisation, the ``net_arch`` hidden layers with their
activation, and the action head whose ``3 * groups`` logits are consecutive chunks of 3 per group. The deterministic
action of a group is the argmax of its chunk after impossible actions are set to ``-inf`` (MaskablePPO's
convention).

``policies.sb3.from_sb3`` builds one from a trained Stable-Baselines3 model; ``policies.export`` writes and reads it
as a ``.safetensors`` file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from runtime import NUM_ACTIONS, EngineOptions, Observation
from runtime.budget import is_budget

from .base import Policy, trained_options

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
"""Hidden-layer activations an exported actor may use, by the name the manifest gives them (default arguments)."""


@dataclass
class ObservationNormalization:
    """Observation normalisation as ``VecNormalize`` applies it: ``clip((x - mean) / sqrt(var + epsilon), ±clip)``.

    Computed in float64 (as ``VecNormalize``'s running statistics are) and returned as float32.

    Attributes:
        mean: ``(F,)`` running mean of each feature.
        var: ``(F,)`` running variance of each feature.
        clip: Normalised values are clipped to ``[-clip, clip]``.
        epsilon: Added to the variance before the square root.
    """

    mean: torch.Tensor
    var: torch.Tensor
    clip: float = 10.0
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).detach().cpu()
        self.var = torch.as_tensor(self.var, dtype=torch.float64).detach().cpu()
        if self.mean.ndim != 1 or self.mean.shape != self.var.shape:
            raise ValueError(
                f"Normalisation mean {tuple(self.mean.shape)} and var {tuple(self.var.shape)} must both have shape "
                "(F,), one entry per feature."
            )
        if not bool(torch.isfinite(self.mean).all() and torch.isfinite(self.var).all()) or bool((self.var < 0).any()):
            raise ValueError("Normalisation mean and var must be finite, and var >= 0.")
        if not _is_number(self.clip) or not math.isfinite(self.clip) or self.clip <= 0:
            raise ValueError(f"Normalisation clip={self.clip!r}: give a finite number > 0.")
        if not _is_number(self.epsilon) or not math.isfinite(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"Normalisation epsilon={self.epsilon!r}: give a finite number >= 0.")
        self.clip, self.epsilon = float(self.clip), float(self.epsilon)
        if bool((self.var + self.epsilon <= 0).any()):
            raise ValueError("Normalisation var + epsilon must be > 0 for every feature (a zero would divide by 0).")
        self._std = torch.sqrt(self.var + self.epsilon)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Normalises ``(samples, F)`` features; returns float32."""
        scaled = torch.sub(features, self.mean).div_(self._std)  # in float64, as the mean is
        return scaled.clamp_(-self.clip, self.clip).to(torch.float32)


class LearnedPolicy(Policy):
    """A trained MLP actor choosing COMPUTE / REUSE / FORECAST per sample and block group.

    Build it with ``policies.export.from_sb3`` from a trained model, or load it with ``policies.load_policy``.

    Args:
        hidden: The hidden ``Linear`` layers, input side first (may be empty).
        action_head: ``Linear`` layer giving ``3 * num_groups`` logits.
        activation: Activation after every hidden layer (a name of :data:`ACTIVATIONS`), or one name per layer.
        feature_names: Names of the observation features, in the order the first layer reads them.
        engine_options: ``groups``, ``probe_blocks`` and ``forecast_order`` the policy was trained with (a
            :class:`runtime.EngineOptions` or a mapping of exactly these, see :func:`~policies.base.trained_options`).
        normalization: Observation normalisation, or ``None`` for raw features.
        budget_conditioned: Whether the policy was trained to follow the ``budget`` feature.
        manifest: Provenance (``model_family``, ``scheduler``, ``training_config_sha256``, ``created_with``, ...).

    Its actions are argmaxes over the possible actions (``masks_actions``).

    Raises:
        ValueError: If the layers do not chain, or do not fit the features, the groups or the engine options.
    """

    masks_actions = True

    def __init__(
        self,
        hidden: Sequence[nn.Linear],
        action_head: nn.Linear,
        *,
        activation: str | Sequence[str] = "tanh",
        feature_names: Sequence[str],
        engine_options: EngineOptions | Mapping[str, Any],
        normalization: ObservationNormalization | None = None,
        budget_conditioned: bool = False,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        activations = [activation] * len(hidden) if isinstance(activation, str) else list(activation)
        if len(activations) != len(hidden):
            raise ValueError(f"Got {len(activations)} activations for {len(hidden)} hidden layers.")
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown:
            raise ValueError(f"Unknown activation(s) {unknown}; supported: {sorted(ACTIVATIONS)}.")
        layers = [*hidden, action_head]
        if not all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in layers):
            raise ValueError("Every layer of the actor must be a torch.nn.Linear with a bias.")
        self.feature_names = tuple(str(name) for name in feature_names)
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"feature_names {list(self.feature_names)} repeat a name.")
        self.num_groups, remainder = divmod(int(action_head.out_features), NUM_ACTIONS)
        if remainder or self.num_groups < 1:
            raise ValueError(
                f"The action head gives {action_head.out_features} logits; it must give {NUM_ACTIONS} per group."
            )
        check_architecture(
            [(f"hidden.{i}", layer.in_features, layer.out_features) for i, layer in enumerate(hidden)]
            + [("action_head", action_head.in_features, action_head.out_features)],
            num_features=len(self.feature_names),
            num_groups=self.num_groups,
        )
        if normalization is not None and normalization.mean.numel() != len(self.feature_names):
            raise ValueError(
                f"Normalisation statistics cover {normalization.mean.numel()} features; the policy reads "
                f"{len(self.feature_names)}."
            )
        self.trained_options = trained_options(engine_options, self.num_groups)
        self.forecast_order = self.trained_options.forecast_order
        self.normalization = normalization
        self.budget_conditioned = bool(budget_conditioned)
        self.activations = tuple(activations)
        modules: list[nn.Module] = []
        for layer, name in zip(hidden, activations, strict=True):
            modules += [_copy_linear(layer), ACTIVATIONS[name]()]
        self.network = nn.Sequential(*modules, _copy_linear(action_head)).eval().requires_grad_(False)
        self._layers = [_layer_function(module) for module in self.network]
        self.manifest = dict(manifest or {})

    @property
    def budget_range(self) -> tuple[float, float] | None:
        """``(low, high)``: the budgets a budget-conditioned policy was trained on, if its manifest records them."""
        value = self._trained_on("budget_range")
        if (
            not (isinstance(value, (list, tuple)) and len(value) == 2 and all(is_budget(v) for v in value))
            or value[0] > value[1]
        ):
            return None
        return float(value[0]), float(value[1])

    @property
    def trained_steps(self) -> int | None:
        """Denoising steps the policy was trained with, if its manifest records one count (not a range)."""
        value = self._trained_on("num_inference_steps")
        return int(value) if _is_int(value) and value > 0 else None

    @property
    def trained_steps_range(self) -> tuple[int, int] | None:
        """``(low, high)``: the denoising step counts the policy was trained on (``low == high`` for one count).

        Read from the manifest's ``trained_on.num_inference_steps``, an int or ``[low, high]``; ``None`` when it
        is missing or malformed.
        """
        value = self._trained_on("num_inference_steps")
        if _is_int(value):
            return (int(value), int(value)) if value > 0 else None
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(_is_int(v) for v in value)
            and 0 < value[0] <= value[1]
        ):
            return int(value[0]), int(value[1])
        return None

    @property
    def trained_schedulers(self) -> tuple[str, ...] | None:
        """Scheduler class names the policy was trained with: ``trained_on.schedulers``, else the manifest's
        ``scheduler``; ``None`` when neither names one."""
        value = self._trained_on("schedulers")
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        single = self.manifest.get("scheduler")
        return (single,) if isinstance(single, str) and single else None

    def _trained_on(self, key: str) -> Any:
        """``manifest["trained_on"][key]``, or ``None`` when the record (a mapping) or its key is missing."""
        trained_on = self.manifest.get("trained_on")
        return trained_on.get(key) if isinstance(trained_on, Mapping) else None

    @property
    def hidden(self) -> list[nn.Linear]:
        """The hidden layers, input side first."""
        return [module for module in self.network[:-1] if isinstance(module, nn.Linear)]

    @property
    def action_head(self) -> nn.Linear:
        """The layer giving the ``3 * num_groups`` logits."""
        return self.network[-1]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(samples, groups, 3)`` action logits of raw (unnormalised) ``(samples, F)`` features."""
        if features.ndim != 2 or features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"Features of shape {tuple(features.shape)}: the policy reads (samples, {len(self.feature_names)})."
            )
        values = self.normalization(features) if self.normalization is not None else features.to(torch.float32)
        for layer in self._layers:
            values = layer(values)
        return values.view(features.shape[0], self.num_groups, NUM_ACTIONS)

    def act(self, observation: Observation) -> torch.Tensor:
        """Deterministic actions: per sample and group, the possible action of highest logit."""
        if observation.names and tuple(observation.names) != self.feature_names:
            raise ValueError(
                f"The observation has features {list(observation.names)}; the policy was trained on "
                f"{list(self.feature_names)}."
            )
        mask = None if observation.every_action_possible else observation.action_mask
        return self._act(observation.features, mask)

    def act_numpy(self, features: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Deterministic actions without an :class:`~runtime.Observation`, like SB3's ``predict(obs, True)``.

        Args:
            features: ``(samples, F)`` raw features, or one ``(F,)`` vector.
            masks: ``(samples, groups, 3)`` (or SB3's flat ``(samples, 3 * groups)``) possible actions, or ``None``
                when every action is possible.

        Returns:
            ``(samples, groups)`` int64 actions, or ``(groups,)`` for a single feature vector.
        """
        array = np.asarray(features)
        batch = torch.as_tensor(np.atleast_2d(array))
        mask = None
        if masks is not None:
            mask = torch.as_tensor(np.asarray(masks, dtype=bool)).reshape(batch.shape[0], self.num_groups, NUM_ACTIONS)
        actions = self._act(batch, mask).numpy()
        return actions[0] if array.ndim == 1 else actions

    def _act(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._act(features, mask)
        logits = self.logits(features)
        if mask is not None:
            if tuple(mask.shape) != tuple(logits.shape):
                raise ValueError(f"Action mask of shape {tuple(mask.shape)}; expected {tuple(logits.shape)}.")
            logits = torch.where(mask.to(torch.bool), logits, -math.inf)
        return logits.argmax(dim=-1)

    def __repr__(self) -> str:
        sizes = [layer.out_features for layer in self.hidden]
        return (
            f"LearnedPolicy(features={len(self.feature_names)}, hidden={sizes}, activations={list(self.activations)}, "
            f"groups={self.num_groups}, normalized={self.normalization is not None}, "
            f"budget_conditioned={self.budget_conditioned}, engine_options={self.engine_options})"
        )


def training_config_sha256(config: Mapping[str, Any] | str | bytes | None) -> str | None:
    """SHA-256 of a training config: of the canonical JSON of a mapping or dataclass, else of its text or bytes."""
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if isinstance(config, Mapping):
        config = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    if isinstance(config, str):
        config = config.encode("utf-8")
    if not isinstance(config, bytes):
        raise TypeError(f"training_config must be a mapping, a dataclass, text or bytes; got {type(config).__name__}.")
    return hashlib.sha256(config).hexdigest()


def check_architecture(layers: Sequence[tuple[str, int, int]], num_features: int, num_groups: int) -> None:
    """Checks that ``(name, in_features, out_features)`` layers chain from the features to ``3 * num_groups`` logits.

    Raises:
        ValueError: Naming the layer whose size does not fit.
    """
    if not layers:
        raise ValueError("The actor has no layers; it needs at least the action head.")
    first_name, first_in, _ = layers[0]
    if first_in != num_features:
        raise ValueError(
            f"Observation size mismatch: {num_features} feature_names but the first layer {first_name!r} takes "
            f"{first_in} inputs."
        )
    for (previous, _, given), (name, taken, _) in zip(layers, layers[1:], strict=False):
        if taken != given:
            raise ValueError(
                f"Layer {name!r} takes {taken} inputs but the layer before it, {previous!r}, gives {given}."
            )
    head_name, _, logits = layers[-1]
    if not _is_int(num_groups) or num_groups < 1 or logits != NUM_ACTIONS * num_groups:
        raise ValueError(
            f"Action head size mismatch: {head_name!r} gives {logits} logits but {num_groups} groups need "
            f"{NUM_ACTIONS} per group ({NUM_ACTIONS} * {num_groups})."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _layer_function(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a frozen layer of the actor computes, without ``nn.Module`` call overhead (the decision is per step)."""
    if isinstance(module, nn.Linear):
        return functools.partial(nn.functional.linear, weight=module.weight, bias=module.bias)
    if isinstance(module, nn.Tanh):
        return torch.tanh
    return module.forward


def _copy_linear(layer: nn.Linear) -> nn.Linear:
    copy = nn.Linear(int(layer.in_features), int(layer.out_features), bias=True)
    with torch.no_grad():
        copy.weight.copy_(layer.weight.detach().to("cpu", torch.float32))
        copy.bias.copy_(layer.bias.detach().to("cpu", torch.float32))
    return copy

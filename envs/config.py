"""Validated configuration of the cache-schedule environment (the ``env:`` section of a YAML config)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from runtime import EngineOptions
from runtime.budget import is_budget
from runtime.observations import DEFAULT_FEATURES, FEATURES

SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}
"""The schedulers a pipeline can be switched to (:func:`envs.pipelines.prepare_pipeline`), by their config name."""

SCHEDULER_NAMES = ("default", *SCHEDULERS)
"""Scheduler names an environment, the training and the benchmark accept (``"default"``: the pipeline's own)."""

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names the field."""


@dataclass
class RewardConfig:
    """Coefficients of the reward (every one of them lives in the config).

    Per step ``t`` of ``S``: ``-compute_cost * c_t / S`` with ``c_t`` the fraction of the transformer's cost
    computed at the step, plus the shaping ``Φ(x_{t+1}) - Φ(x_t)`` with ``Φ(x) = -shaping * rmse(x, x_ref)``
    against the uncached trajectory of the same condition and seed. At the end: ``-ssim_weight * (1 - SSIM)``,
    ``-psnr_weight * (psnr_cap - min(PSNR, psnr_cap)) / psnr_cap`` and, with a budget,
    ``-overspend_penalty * max(0, compute_fraction - budget)``.

    Attributes:
        compute_cost: Weight of compute spent over the episode (α).
        shaping: Weight of the potential on the latent deviation from the reference.
        ssim_weight: Weight of the final 1 - SSIM.
        psnr_weight: Weight of the final PSNR shortfall below ``psnr_cap``.
        psnr_cap: PSNR (dB) treated as perfect.
        overspend_penalty: Weight of exceeding the episode's budget.
        cost_model: ``"flops"``: a step's cost is its FLOPs (measured with FlopCounterMode) as a fraction of an
            uncached step's.
    """

    compute_cost: float = 0.1
    shaping: float = 4.0
    ssim_weight: float = 1.0
    psnr_weight: float = 4.0
    psnr_cap: float = 45.0
    overspend_penalty: float = 8.0
    cost_model: str = "flops"

    def __post_init__(self) -> None:
        for name in ("compute_cost", "shaping", "ssim_weight", "psnr_weight", "overspend_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"reward.{name}={getattr(self, name)}: must be >= 0.")
        if self.psnr_cap <= 0:
            raise ConfigError(f"reward.psnr_cap={self.psnr_cap}: must be > 0 dB.")
        if self.cost_model != "flops":
            raise ConfigError(f"reward.cost_model={self.cost_model!r}: the supported cost model is 'flops'.")


@dataclass
class EnvConfig:
    """What the environment generates and how the engine is set up.

    Attributes:
        model: A shipped model name (``mini-dit-digits``, ``mini-flow-digits``), a local folder or a hub id.
        scheduler: ``"default"`` (the pipeline's), ``"ddim"``, ``"dpmsolver++"`` or ``"euler"``; or a list of them,
            one drawn per batch of episodes (per episode in the single environment).
        num_inference_steps: Denoising steps per episode (one env step each); or ``[low, high]``, a whole number
            drawn per batch of episodes (per episode in the single environment) from ``low`` to ``high`` inclusive.
        guidance_scale: Classifier-free guidance scale.
        groups: Block groups (one action each per step).
        probe_blocks: Always-computed front blocks.
        forecast_order: Taylor order of FORECAST (1 to 3).
            These three are the engine options the policy is trained with (:attr:`engine_options`).
        features: Observation features the policy reads (names of ``runtime.observations.FEATURES``; a per-group
            feature gives one column per group).
        train_classes / eval_classes: Disjoint class labels for training and evaluation (class-conditional models).
        prompts: Prompts of a text-to-image or text-to-video model: a ``.txt`` file (one a line), a YAML list file,
            a list, or ``{train: ..., eval: ..., test: ...}`` (each a file or list; ``test`` defaults to ``eval``).
            One file or list is split deterministically (``envs.conditions.split_prompts``: by the SHA-256 of each
            prompt, 10% test, 10% validation, the rest training). Resolved into the three lists when the config is
            built. ``None`` for class-conditional models.
        negative_prompt: Negative prompt under guidance (``None``: the empty prompt).
        pipeline_kwargs: Extra arguments of every pipeline call, e.g. ``{height: 512, width: 512}``, ``num_frames``,
            ``true_cfg_scale`` (FLUX), ``max_sequence_length``.
        embeddings: A ``.safetensors`` file of precomputed prompt embeddings (see ``envs.conditions.PromptEncoder``).
        embedding_cache_dir: Folder to keep encoded prompts on disk across runs, or ``None``.
        device: Where the pipeline runs: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: Weights' dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (metrics are float32 either way).
        train_seeds / eval_seeds: Disjoint ``[start, stop)`` seed ranges.
        budget_conditioned: Draw a target compute fraction per episode and show it to the policy.
        budget_range: ``[low, high]`` the budget is drawn from, inside (0, 1].
        group_rollouts: Episodes per draw in a batch of the vector environment (GRPO-style groups): each batch holds
            ``num_envs / group_rollouts`` draws of condition, seed and budget, each run ``group_rollouts`` times,
            and with more than one every step's reward is taken relative to the mean of its group.
        reference_cache_dir: Folder to keep uncached reference trajectories on disk across runs, or ``None``.
        reward: Reward coefficients.
    """

    model: str = "mini-dit-digits"
    scheduler: str | list[str] = "default"
    num_inference_steps: int | list[int] = 50
    guidance_scale: float = 2.0
    groups: int = 4
    probe_blocks: int = 0
    forecast_order: int = 1
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    train_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    eval_classes: list[int] = field(default_factory=lambda: [7, 8, 9])
    train_seeds: list[int] = field(default_factory=lambda: [0, 64])
    eval_seeds: list[int] = field(default_factory=lambda: [2_000_000, 2_000_100])
    budget_conditioned: bool = True
    budget_range: list[float] = field(default_factory=lambda: [0.15, 0.5])
    group_rollouts: int = 1
    reference_cache_dir: str | None = None
    prompts: str | list[str] | dict[str, Any] | None = None
    negative_prompt: str | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    embeddings: str | None = None
    embedding_cache_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = from_dict(RewardConfig, self.reward, prefix="reward.")
        self._check_sampling()
        if self.forecast_order is None:
            raise ConfigError("forecast_order=None: use 1, 2 or 3.")
        try:
            _ = self.engine_options  # checks groups, probe_blocks and forecast_order
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not self.features or len(set(self.features)) != len(self.features):
            raise ConfigError(f"features={self.features}: name each observation feature once, at least one.")
        unknown = [name for name in self.features if name not in FEATURES]
        if unknown:
            raise ConfigError(f"features: unknown {unknown}; the engine builds {list(FEATURES)}.")
        if self.group_rollouts < 1:
            raise ConfigError(f"group_rollouts={self.group_rollouts}: use 1 (no groups) or more.")
        if not self.train_classes or not self.eval_classes:
            raise ConfigError("train_classes and eval_classes must each name at least one condition.")
        shared = sorted(set(self.train_classes) & set(self.eval_classes))
        if shared:
            raise ConfigError(
                f"train_classes and eval_classes overlap in {shared}: evaluation must use conditions never trained on."
            )
        for name in ("train_seeds", "eval_seeds"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] >= value[1] or value[0] < 0:
                raise ConfigError(f"{name}={value}: give [start, stop) with 0 <= start < stop.")
        (a, b), (c, d) = self.train_seeds, self.eval_seeds
        if a < d and c < b:
            raise ConfigError(f"train_seeds={self.train_seeds} and eval_seeds={self.eval_seeds} overlap.")
        low, high = self.budget_range
        if not (is_budget(low) and is_budget(high) and low <= high):
            raise ConfigError(f"budget_range={self.budget_range}: need 0 < low <= high <= 1.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: use one of {list(DTYPES)} (--dtype).")
        if not isinstance(self.pipeline_kwargs, dict):
            raise ConfigError(f"pipeline_kwargs={self.pipeline_kwargs!r}: give a mapping of call arguments.")
        from .conditions import resolve_prompt_splits

        self.prompts = resolve_prompt_splits(self.prompts, "prompts")

    @property
    def engine_options(self) -> EngineOptions:
        """The engine options the policy runs with here: ``groups``, ``probe_blocks`` and ``forecast_order``."""
        return EngineOptions(groups=self.groups, probe_blocks=self.probe_blocks, forecast_order=self.forecast_order)

    def conditions(self, split: str) -> list[Any]:
        """The conditions of a split (``"train"``, ``"eval"`` or ``"test"``): its prompts, or else class labels."""
        if self.prompts is not None:
            return list(self.prompts[split])
        return list(self.train_classes if split == "train" else self.eval_classes)

    @property
    def steps_range(self) -> tuple[int, int]:
        """``(low, high)`` denoising steps episodes are drawn with (``low == high`` for a fixed count)."""
        steps = self.num_inference_steps
        return (steps, steps) if isinstance(steps, int) else (steps[0], steps[1])

    @property
    def scheduler_names(self) -> list[str]:
        """The schedulers episodes are drawn with, in the configured order."""
        return [self.scheduler] if isinstance(self.scheduler, str) else list(self.scheduler)

    def covers(self, scheduler: str, steps: int) -> bool:
        """Whether episodes can be drawn with this scheduler and step count."""
        low, high = self.steps_range
        return scheduler in self.scheduler_names and low <= steps <= high

    @property
    def fixed_sampling(self) -> bool:
        """Whether every episode uses one step count and one scheduler (nothing is drawn)."""
        low, high = self.steps_range
        return low == high and len(self.scheduler_names) == 1

    def _check_sampling(self) -> None:
        steps = self.num_inference_steps
        if isinstance(steps, list):
            if len(steps) != 2 or not 2 <= steps[0] <= steps[1]:
                raise ConfigError(
                    f"num_inference_steps={steps}: give a step count, or [low, high] with 2 <= low <= high."
                )
        elif steps < 2:
            raise ConfigError(f"num_inference_steps={steps}: use at least 2.")
        names = self.scheduler_names
        unknown = [name for name in names if name not in SCHEDULER_NAMES]
        if unknown or not names or len(set(names)) != len(names):
            raise ConfigError(
                f"scheduler={self.scheduler!r}: use one of {list(SCHEDULER_NAMES)}, or a list naming each of them at "
                "most once."
            )


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Builds a config dataclass from plain data, naming any unknown key or wrongly typed value.

    Args:
        cls: The dataclass.
        data: Its fields as plain values (nested dataclasses as dicts).
        prefix: Prepended to field names in errors (e.g. ``"env."``).

    Raises:
        ConfigError: Unknown key, wrong type, or a value the dataclass rejects.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping, got {type(value).__name__}.")
            values[name] = from_dict(hint, value, prefix=f"{prefix}{name}.")
            continue
        values[name] = _check_type(f"{prefix}{name}", value, hint)
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{prefix}{error}") from None


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{name}={value!r} has the wrong type: expected {hint}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}={value!r} has the wrong type: expected a list.")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r} has the wrong type: expected a number.")
        return float(value)
    if hint in (int, bool, str):
        if type(value) is not hint:
            raise ConfigError(f"{name}={value!r} has the wrong type: expected {hint.__name__}.")
        return value
    return value

"""Drawing an episode's condition (class label or prompt), seed and budget from the configured train or eval split,
and the step count and scheduler a batch of episodes is generated with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.budget import check_budget

from .config import SCHEDULER_NAMES, ConfigError, EnvConfig

SPLITS = ("train", "eval")
SETTING_KEYS = ("num_inference_steps", "scheduler")
OPTION_KEYS = ("condition", "seed", "budget", "split", *SETTING_KEYS)


@dataclass(frozen=True)
class EpisodeSpec:
    """What one episode generates: ``condition`` (class label or prompt), ``seed`` and ``budget`` (or ``None``)."""

    condition: int | str
    seed: int
    budget: float | None


def draw_episode(
    rng: np.random.Generator, config: EnvConfig, split: str, options: dict[str, Any] | None
) -> EpisodeSpec:
    """Draws an episode from ``split``; ``options`` may fix ``condition``, ``seed``, ``budget`` or ``split``.

    Raises:
        ConfigError: For an unknown option or split, or a budget outside (0, 1].
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"unknown reset option(s) {unknown}; known: {list(OPTION_KEYS)}.")
    split = options.get("split", split)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use 'train' or 'eval'.")
    pool = config.conditions(split)
    start, stop = config.train_seeds if split == "train" else config.eval_seeds
    if "condition" in options:
        given = options["condition"]
        condition = given if isinstance(given, str) else int(given)
    elif config.prompts is not None:
        condition = pool[int(rng.integers(len(pool)))]
    else:
        condition = int(rng.choice(pool))
    seed = int(options["seed"]) if "seed" in options else int(rng.integers(start, stop))
    budget = None
    if config.budget_conditioned:
        low, high = config.budget_range
        given = options.get("budget")  # None: drawn, as when not given
        budget = float(given) if given is not None else float(rng.uniform(low, high))
        check_budget(budget, "budget", ConfigError)
    elif options.get("budget") is not None:
        raise ConfigError("budget was given but the environment is not budget-conditioned (budget_conditioned=false).")
    return EpisodeSpec(condition, seed, budget)


@dataclass(frozen=True)
class SamplingSetting:
    """How a batch of episodes is generated: the ``scheduler`` (a name of ``EnvConfig.scheduler``) and ``steps``."""

    scheduler: str
    steps: int

    @property
    def label(self) -> str:
        """``<scheduler>_<steps>``, e.g. ``ddim_20``."""
        return f"{self.scheduler}_{self.steps}"


def draw_setting(
    rng: np.random.Generator, config: EnvConfig, options: dict[str, Any] | None = None
) -> SamplingSetting:
    """Draws the step count (uniform whole number in ``[low, high]``) and the scheduler (uniform over the list).

    Nothing is drawn from ``rng`` for a fixed step count or a single scheduler, so a configuration without ranges
    draws its episodes exactly as before ranges existed. ``options`` may fix ``num_inference_steps`` (any count
    >= 2) and ``scheduler`` (any known name).

    Raises:
        ConfigError: For a fixed step count below 2 or an unknown scheduler.
    """
    options = options or {}
    low, high = config.steps_range
    names = config.scheduler_names
    steps = options.get("num_inference_steps")
    if steps is None:
        steps = low if low == high else int(rng.integers(low, high + 1))
    elif isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ConfigError(f"num_inference_steps={steps!r}: a reset option fixing the steps must be a count >= 2.")
    scheduler = options.get("scheduler")
    if scheduler is None:
        scheduler = names[0] if len(names) == 1 else names[int(rng.integers(len(names)))]
    elif scheduler not in SCHEDULER_NAMES:
        raise ConfigError(f"scheduler={scheduler!r}: a reset option fixing it must be one of {list(SCHEDULER_NAMES)}.")
    return SamplingSetting(str(scheduler), int(steps))


def default_setting(config: EnvConfig) -> SamplingSetting:
    """The configured setting when nothing is drawn; with ranges, the largest step count and the first scheduler."""
    return SamplingSetting(config.scheduler_names[0], config.steps_range[1])

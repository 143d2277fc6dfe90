"""Drawing an episode's condition (class label or prompt), seed and budget from the configured train or eval split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ConfigError, EnvConfig

SPLITS = ("train", "eval")
OPTION_KEYS = ("condition", "seed", "budget", "split")


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
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget={budget}: a compute fraction must lie in (0, 1].")
    elif options.get("budget") is not None:
        raise ConfigError("budget was given but the environment is not budget-conditioned (budget_conditioned=false).")
    return EpisodeSpec(condition, seed, budget)

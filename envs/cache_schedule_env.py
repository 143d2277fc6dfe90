"""``CachePilot/CacheSchedule-v0``: learn when each part of a diffusion transformer may skip work."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .config import EnvConfig, from_dict
from .episodes import EpisodeBatch
from .sampling import draw_episode, draw_setting


class CacheScheduleEnv(gym.Env):
    """One denoising generation per episode; one env step per denoising step.

    The environment drives an unmodified diffusers pipeline (by default the shipped ``mini-dit-digits``) with the
    CachePilot engine hooked into its transformer; every action is executed by that engine, the same one used at
    inference.

    ## Action Space
    ``MultiDiscrete([3] * groups)``: for each block group (relative depth, front to back) ``0`` COMPUTE,
    ``1`` REUSE the group's cached residual, ``2`` FORECAST it by Taylor extrapolation. Impossible actions
    (anything but COMPUTE at the first step, REUSE before the group has computed once, FORECAST before it has
    computed twice) are masked by :meth:`action_masks` (MaskablePPO's convention, ``groups * 3`` booleans) and,
    if sent anyway, replaced by the nearest possible one (FORECAST → REUSE → COMPUTE).

    ## Observation Space
    ``Box(F)`` float32, built by ``runtime.build_observation`` exactly as at inference: the columns of the features
    ``config.features`` names (``runtime.feature_names(groups, features)``: the features shared by all groups,
    then one column per group of each per-group feature). Every feature, its meaning and its range is in
    :data:`runtime.observations.FEATURES` (rendered in ``docs/how-it-works.md``); the space's bounds are those
    ranges.

    ## Rewards
    A compute cost every step, potential-based shaping on the latents' deviation from the uncached trajectory of
    the same condition and seed, and at the last step SSIM and PSNR terms against the uncached image plus, when
    budget-conditioned, an overspend penalty: the terms, term by term, are :data:`envs.rewards.REWARD_TERMS`
    (rendered in ``docs/how-it-works.md``), with coefficients from ``config.reward``.

    ## Starting State
    Noise from the episode's seed. The condition and seed are drawn from the training split (or ``split``), the
    budget uniformly from ``budget_range``; ``reset(options={"condition", "seed", "budget", "split"})`` fixes them.
    Training and evaluation conditions and seeds never overlap.

    ## Episode End
    Terminates after ``num_inference_steps`` steps; never truncated. The final ``info`` carries ``psnr``,
    ``ssim``, ``compute_fraction``, ``flops_speedup``, ``budget``, ``condition``, ``seed``,
    ``num_inference_steps``, ``scheduler`` and the images.

    ## Step counts and schedulers
    ``num_inference_steps: [low, high]`` draws each episode's step count (a whole number, inclusive) and a list of
    schedulers draws each episode's scheduler, both from the episode's seed; the reset ``info`` then names them too
    and ``reset(options={"num_inference_steps", "scheduler"})`` fixes them. The per-step compute cost is divided by
    the episode's own step count, and references are kept per scheduler and step count.

    ## Arguments
    - ``config``: an :class:`envs.config.EnvConfig` or a dict of its fields (model, scheduler(s), steps, guidance,
      groups, probe blocks, forecast order, splits, budget range, reward coefficients).
    - ``pipe``: an already loaded pipeline to use instead of ``config.model``.
    - ``split``: ``"train"`` (default) or ``"eval"``, the split episodes are drawn from.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig | dict | None = None, pipe: Any = None, split: str = "train") -> None:
        super().__init__()
        self.config = config if isinstance(config, EnvConfig) else from_dict(EnvConfig, config, prefix="env.")
        self.split = split
        self.episodes = EpisodeBatch(self.config, pipe)
        self.observation_space = self.episodes.observation_space
        self.action_space = self.episodes.action_space
        self._done = True

    @property
    def engine(self):
        """The cache engine hooked into the pipeline's transformer."""
        return self.episodes.engine

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        setting = draw_setting(self.np_random, self.config, options)
        spec = draw_episode(self.np_random, self.config, self.split, options)
        budgets = None if spec.budget is None else [spec.budget]
        observations = self.episodes.begin([spec.condition], [spec.seed], budgets, setting)
        self._done = False
        info = {"condition": spec.condition, "seed": spec.seed, "budget": spec.budget}
        if not self.config.fixed_sampling:
            info.update(num_inference_steps=setting.steps, scheduler=setting.scheduler)
        return observations[0], info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._done:
            raise RuntimeError("The episode has ended: call reset() before step().")
        result = self.episodes.step(np.asarray(action)[None])
        self._done = result.done
        info = result.infos[0] if result.done else {}
        return result.observations[0], float(result.rewards[0]), result.done, False, info

    def action_masks(self) -> np.ndarray:
        """``groups * 3`` booleans: which actions are possible at the current step."""
        return self.episodes.action_masks()[0]

    def close(self) -> None:
        self.episodes.close()

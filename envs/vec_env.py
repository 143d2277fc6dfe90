"""N episodes as N samples of one batched denoising run: one transformer forward serves all of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from .config import EnvConfig, from_dict
from .sampling import SETTING_KEYS, draw_episode, draw_setting
from .shards import EpisodeShards, LocalShards, ShardStart, check_shard_split


class CacheScheduleVecEnv(VecEnv):
    """Stable-Baselines3 vector environment of ``num_envs`` cache-schedule episodes run as one batch.

    Every sub-environment is one sample of the same batched generation, with its own condition, seed, budget and
    actions (the engine computes each block group only on the sub-batch that chose COMPUTE). All episodes end
    together after ``num_inference_steps`` steps; the next batch starts at once (auto-reset), and each episode's
    last observation is in ``info["terminal_observation"]``. Spaces, rewards and infos are those of
    :class:`envs.CacheScheduleEnv`.

    With a step range or a list of schedulers in the config, each batch draws its step count and scheduler once,
    for all its sub-environments (they are one batched generation), from the environment's seed, before the
    episodes' draws; ``reset_infos`` and the final infos carry ``num_inference_steps`` and ``scheduler``.
    ``set_options`` may fix them, with the same values for every sub-environment. SB3's rollout buffer takes
    episodes of any length: a rollout of ``n_steps`` may end inside an episode, whose return is then bootstrapped
    from the critic as usual.

    With ``config.group_rollouts = G > 1`` the batch holds ``num_envs / G`` draws, each run by ``G`` consecutive
    sub-environments (the same condition, seed and budget), and each step's reward is the episode's reward minus
    the mean over its group: a group-relative advantage (GRPO) that leaves out how hard the sample is, so that
    only what the actions changed is rewarded. ``info["reward"]`` keeps the episode's own reward.

    With ``shards = S > 1`` the batch is split into ``S`` contiguous sub-batches, each its own batched generation
    through its own engine (see :mod:`envs.shards`): in this process, or on Ray workers
    (``distributed.RayShards``), with the same results. Draws, rewards and resets are those of one batch. Each shard
    holds whole groups of ``G`` rollouts (a count that would cut a group in two is refused).

    Args:
        num_envs: Samples per batch.
        config: An :class:`EnvConfig` or a dict of its fields.
        pipe: An already loaded pipeline to use instead of ``config.model``.
        split: ``"train"`` or ``"eval"``.
        seed: Seed of the episode draws.
        shards: Number of sub-batches run in this process (each but the first in a copy of the pipeline), or the
            :class:`~envs.shards.EpisodeShards` that run them elsewhere.
    """

    def __init__(
        self,
        num_envs: int,
        config: EnvConfig | dict | None = None,
        pipe: Any = None,
        split: str = "train",
        seed: int | None = None,
        shards: int | EpisodeShards = 1,
    ) -> None:
        self.config = config if isinstance(config, EnvConfig) else from_dict(EnvConfig, config, prefix="env.")
        self.split = split
        self.render_mode = None
        self.group_rollouts = self.config.group_rollouts
        if num_envs % self.group_rollouts:
            raise ValueError(
                f"num_envs={num_envs} is not a multiple of env.group_rollouts={self.group_rollouts}: each draw runs "
                "group_rollouts times in one batch."
            )
        check_shard_split(num_envs, shards if isinstance(shards, int) else shards.count, self.group_rollouts)
        self.shards = LocalShards(self.config, shards, pipe) if isinstance(shards, int) else shards
        self.episodes = self.shards.episodes
        super().__init__(num_envs, self.episodes.observation_space, self.episodes.action_space)
        self._rng = np.random.default_rng(seed)
        self._masks: np.ndarray | None = None

    @property
    def engine(self):
        """The cache engine hooked into the pipeline's transformer."""
        return self.episodes.engine

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        self._rng = np.random.default_rng(seed)
        return [seed] * self.num_envs

    def reset(self) -> np.ndarray:
        g = self.group_rollouts
        setting = draw_setting(self._rng, self.config, self._setting_options())
        draws = [
            draw_episode(self._rng, self.config, self.split, self._options[i]) for i in range(0, self.num_envs, g)
        ]
        specs = [spec for spec in draws for _ in range(g)]
        size = self.num_envs // self.shards.count
        starts = [
            ShardStart(
                tuple(s.condition for s in part),
                tuple(s.seed for s in part),
                None if part[0].budget is None else tuple(s.budget for s in part),
                setting,
            )
            for part in (specs[i : i + size] for i in range(0, self.num_envs, size))
        ]
        begun = self.shards.begin(starts)
        observations = np.concatenate([observations for observations, _ in begun])
        self._masks = np.concatenate([masks for _, masks in begun])
        self.reset_infos = [
            {
                "condition": s.condition,
                "seed": s.seed,
                "budget": s.budget,
                "num_inference_steps": setting.steps,
                "scheduler": setting.scheduler,
            }
            for s in specs
        ]
        self._reset_options()  # set_options applies to the next reset only, as in SB3's DummyVecEnv
        return observations

    def _setting_options(self) -> dict[str, Any]:
        """The step count and scheduler the reset options fix: one value for the whole batch, or none."""
        fixed: dict[str, Any] = {}
        for key in SETTING_KEYS:
            values = {options.get(key) for options in self._options}
            if len(values) > 1:
                raise ValueError(
                    f"set_options gives the sub-environments different {key} values {sorted(map(str, values))}: a "
                    "batch is one generation, with one step count and one scheduler."
                )
            fixed[key] = values.pop()
        return fixed

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions).reshape(self.num_envs, -1)
        self.shards.step_async(np.split(actions, self.shards.count))

    def step_wait(self) -> VecEnvStepReturn:
        stepped = self.shards.step_wait()
        results = [result for result, _ in stepped]
        done = results[0].done
        if any(result.done != done for result in results):
            raise RuntimeError("The shards of one batch ended their episodes at different steps.")
        observations = np.concatenate([r.observations for r in results])
        rewards = np.concatenate([r.rewards for r in results])
        infos = [info for r in results for info in r.infos]
        if not done:
            self._masks = np.concatenate([masks for _, masks in stepped])
        if self.group_rollouts > 1:
            for info, reward in zip(infos, rewards, strict=True):
                info["reward"] = float(reward)
            grouped = rewards.reshape(-1, self.group_rollouts)
            rewards = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1).astype(np.float32)
        dones = np.full(self.num_envs, done)
        if done:
            for info, observation in zip(infos, observations, strict=True):
                info["terminal_observation"] = observation
            observations = self.reset()
        return observations, rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        """``(num_envs, groups * 3)`` possible actions."""
        return self._masks

    def close(self) -> None:
        self.shards.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        indices = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in indices]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in indices]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

"""Gymnasium environments over the denoising loop, for learning cache schedules."""

import gymnasium

from .cache_schedule_env import CacheScheduleEnv
from .config import ConfigError, EnvConfig, RewardConfig, from_dict
from .vec_env import CacheScheduleVecEnv

ENV_ID = "CachePilot/CacheSchedule-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.cache_schedule_env:CacheScheduleEnv")

__all__ = [
    "ENV_ID",
    "CacheScheduleEnv",
    "CacheScheduleVecEnv",
    "ConfigError",
    "EnvConfig",
    "RewardConfig",
    "from_dict",
]

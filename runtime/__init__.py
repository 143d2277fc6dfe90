"""CachePilot's cache engine: COMPUTE / REUSE / FORECAST per denoising step, block group and sample."""

from .actions import NUM_ACTIONS, Action
from .allocator import keep_freed_memory
from .api import cached, disable_cache, enable_cache, get_engine
from .blocks import find_blocks, split_groups, supported_block_classes
from .config import CacheConfig, EngineOptions
from .decisions import PolicyLike, safe_actions
from .engine import CacheEngine
from .layout import CfgLayout
from .observations import Observation, build_observation, feature_names

__all__ = [
    "NUM_ACTIONS",
    "Action",
    "CacheConfig",
    "CacheEngine",
    "CfgLayout",
    "EngineOptions",
    "Observation",
    "PolicyLike",
    "build_observation",
    "cached",
    "disable_cache",
    "enable_cache",
    "feature_names",
    "find_blocks",
    "get_engine",
    "keep_freed_memory",
    "safe_actions",
    "split_groups",
    "supported_block_classes",
]

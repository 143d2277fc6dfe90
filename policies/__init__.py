"""Cache policies: the interface, the classic hand-designed caches, and the learned policy."""

from .always import AlwaysCompute
from .base import Policy
from .delta_dit import DeltaDiT
from .export import PolicyFormatError, export_policy, export_schedule, load_policy, load_schedule
from .first_block import FirstBlockThreshold
from .fora import FORA
from .interface import cached, enable_cache
from .learned import LearnedPolicy
from .recording import ActionRecorder
from .sb3 import from_sb3
from .schedule import StaticSchedulePolicy, schedule_from_actions
from .taylorseer import TaylorSeer

__all__ = [
    "FORA",
    "ActionRecorder",
    "AlwaysCompute",
    "DeltaDiT",
    "FirstBlockThreshold",
    "LearnedPolicy",
    "Policy",
    "PolicyFormatError",
    "StaticSchedulePolicy",
    "TaylorSeer",
    "cached",
    "enable_cache",
    "export_policy",
    "from_sb3",
    "export_schedule",
    "load_policy",
    "load_schedule",
    "schedule_from_actions",
]

"""Cache policies: the interface, the classic hand-designed caches, and (later) the learned policy."""

from .always import AlwaysCompute
from .base import Policy
from .delta_dit import DeltaDiT
from .export import PolicyFormatError, export_policy, export_schedule, load_policy, load_schedule
from .first_block import FirstBlockThreshold
from .fora import FORA
from .learned import LearnedPolicy, StaticSchedulePolicy
from .taylorseer import TaylorSeer

__all__ = [
    "FORA",
    "AlwaysCompute",
    "DeltaDiT",
    "FirstBlockThreshold",
    "LearnedPolicy",
    "Policy",
    "PolicyFormatError",
    "StaticSchedulePolicy",
    "TaylorSeer",
    "export_policy",
    "export_schedule",
    "load_policy",
    "load_schedule",
]

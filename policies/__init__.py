"""Cache policies: the interface, the classic hand-designed caches, and (later) the learned policy."""

from .always import AlwaysCompute
from .base import Policy
from .delta_dit import DeltaDiT
from .first_block import FirstBlockThreshold
from .fora import FORA
from .taylorseer import TaylorSeer

__all__ = ["FORA", "AlwaysCompute", "DeltaDiT", "FirstBlockThreshold", "Policy", "TaylorSeer"]

"""FORA: every group's residual is reused for ``interval - 1`` steps, then recomputed."""

from __future__ import annotations

import torch

from runtime import Action, Observation

from .base import Policy, check_interval, interval_due


class FORA(Policy):
    """Static-interval reuse (FORA, Selvaraju et al. 2024), per block group.

    Args:
        interval: Compute every ``interval`` steps (steps 0, N, 2N, ...), reuse in between.
    """

    def __init__(self, interval: int = 3) -> None:
        check_interval(interval)
        self.interval = interval

    def act(self, observation: Observation) -> torch.Tensor:
        due = interval_due(observation, self.interval)
        return torch.where(due, int(Action.COMPUTE), int(Action.REUSE)).to(torch.int64)

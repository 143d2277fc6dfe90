"""TaylorSeer: compute every ``interval`` steps, forecast every group's residual in between."""

from __future__ import annotations

import torch

from runtime import Action, Observation

from .base import Policy, check_interval, interval_due


class TaylorSeer(Policy):
    """Interval compute with Taylor forecasts in between (TaylorSeer, Liu et al. 2025), per block group.

    Args:
        interval: Compute every ``interval`` steps.
        order: Taylor order of the forecast (1 to 3); with fewer computed steps than ``order + 1`` the
            forecast uses what there is (a plain reuse after one).
        warmup: Steps computed in full at the start of each generation.
    """

    def __init__(self, interval: int = 4, order: int = 1, warmup: int = 0) -> None:
        check_interval(interval)
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
            raise ValueError(f"order={order!r}: use 1, 2 or 3.")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup={warmup!r}: give a whole number of steps >= 0.")
        self.interval = interval
        self.order = order
        self.warmup = warmup
        self.forecast_order = order

    def act(self, observation: Observation) -> torch.Tensor:
        due = interval_due(observation, self.interval) | (observation.step_index < self.warmup)
        return torch.where(due, int(Action.COMPUTE), int(Action.FORECAST)).to(torch.int64)

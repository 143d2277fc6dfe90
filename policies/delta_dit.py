"""Δ-DiT: cache the rear groups early in sampling (outline) and the front groups late (detail)."""

from __future__ import annotations

import torch

from runtime import Action, Observation

from .base import Policy, check_interval, interval_due


class DeltaDiT(Policy):
    """Phase-dependent caching of a span of groups (Δ-DiT, Chen et al. 2024).

    While the normalised diffusion time is above ``boundary`` (early, noisy steps) the rear ``span`` of the
    groups is cached; after it, the front ``span``. Cached groups compute every ``interval`` steps and reuse
    their residual in between; the other groups always compute.

    Args:
        interval: Compute interval of the cached groups.
        boundary: Normalised time in (0, 1) where the phases switch.
        span: Fraction of the groups cached in each phase, in (0, 1].
    """

    def __init__(self, interval: int = 3, boundary: float = 0.5, span: float = 0.5) -> None:
        check_interval(interval)
        if not 0.0 < boundary < 1.0:
            raise ValueError(f"boundary={boundary!r}: a normalised time strictly between 0 and 1.")
        if not 0.0 < span <= 1.0:
            raise ValueError(f"span={span!r}: a fraction of the groups in (0, 1].")
        self.interval = interval
        self.boundary = boundary
        self.span = span

    def act(self, observation: Observation) -> torch.Tensor:
        groups = observation.num_groups
        cached_count = max(1, round(groups * self.span))
        cached = torch.zeros(groups, dtype=torch.bool, device=observation.action_mask.device)
        if observation.time > self.boundary:
            cached[groups - cached_count :] = True
        else:
            cached[:cached_count] = True
        reuse = cached[None, :] & ~interval_due(observation, self.interval)
        return torch.where(reuse, int(Action.REUSE), int(Action.COMPUTE)).to(torch.int64)

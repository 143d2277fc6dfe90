"""The reference: every block computes at every step."""

from __future__ import annotations

import torch

from runtime import Action, Observation

from .base import Policy, fill


class AlwaysCompute(Policy):
    """Computes everything; through the engine the output is bit-identical to the uncached model."""

    def act(self, observation: Observation) -> torch.Tensor:
        return fill(observation, Action.COMPUTE)

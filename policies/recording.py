"""Recording a policy's decisions, and reducing them to the static schedule they amount to."""

from __future__ import annotations

from typing import Any

import torch

from runtime import Observation

from .schedule import schedule_from_actions


class ActionRecorder:
    """Acts exactly as ``policy`` does (the engine sees its features, order and masking) and keeps its actions.

    Args:
        policy: The policy to record.

    Attributes:
        actions: One ``(samples, groups)`` tensor per decision, in order.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.actions: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        if name == "policy":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.policy, name)

    def act(self, observation: Observation) -> torch.Tensor:
        actions = torch.as_tensor(self.policy.act(observation))
        self.actions.append(actions.clone())
        return actions

    def static_replay(self) -> torch.Tensor:
        """The majority schedule of the recorded decisions: ``(steps, groups)`` (see ``schedule_from_actions``)."""
        return schedule_from_actions(self.actions)

    def disagreement(self) -> float:
        """Share of the recorded step × group cells where the samples did not all take the same action."""
        if not self.actions:
            raise ValueError("No decision was recorded.")
        differ = [(a != a[:1]).any(dim=0).double().mean() for a in self.actions]
        return float(torch.stack(differ).mean())

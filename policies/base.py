"""The policy interface: what decides, per step, group and sample, between COMPUTE, REUSE and FORECAST."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from runtime import Action, Observation


class Policy(ABC):
    """Chooses one action per sample and block group at each denoising step.

    Attributes:
        forecast_order: Taylor order the engine uses for this policy's FORECAST actions.
        num_groups: Groups the policy was built for, or ``None`` if it fits any number.
        feature_names: Observation features the policy expects, or ``None`` if it reads only named signals.
        engine_options: Engine options the policy was trained with (``groups``, ``probe_blocks``, ...), used as
            defaults by ``runtime.enable_cache``.
        required_signals: Signals the engine must keep that it otherwise skips (``"accumulated_input_change"``).
        masks_actions: Whether ``act`` returns only actions in range that ``observation.action_mask`` allows, so
            the engine need not check and map them.
    """

    forecast_order: int = 1
    num_groups: int | None = None
    feature_names: tuple[str, ...] | None = None
    engine_options: dict[str, Any] = {}
    required_signals: tuple[str, ...] = ()
    masks_actions: bool = False

    @abstractmethod
    def act(self, observation: Observation) -> torch.Tensor:
        """Returns ``(samples, groups)`` int64 actions (values of :class:`runtime.Action`).

        Impossible actions (see ``observation.action_mask``) are mapped by the engine to the nearest possible
        one (FORECAST -> REUSE -> COMPUTE), so a policy may ignore the mask.
        """

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({knobs})"


def fill(observation: Observation, action: Action) -> torch.Tensor:
    """``(samples, groups)`` actions all equal to ``action``."""
    shape = (observation.num_samples, observation.num_groups)
    return torch.full(shape, int(action), dtype=torch.int64, device=observation.action_mask.device)


def interval_due(observation: Observation, interval: int) -> torch.Tensor:
    """``(samples, groups)`` True where a group has gone ``interval`` steps without computing."""
    return observation.signals["since_compute"] >= interval


def check_interval(interval: int) -> None:
    """Raises a clear error unless ``interval`` is a whole number >= 1."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval={interval!r}: give a whole number of steps >= 1.")

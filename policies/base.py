"""The policy interface: what decides, per step, group and sample, between COMPUTE, REUSE and FORECAST."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

from runtime import Action, EngineOptions, Observation
from runtime.config import TRAINED_OPTIONS


class Policy(ABC):
    """Chooses one action per sample and block group at each denoising step.

    Attributes:
        forecast_order: Taylor order the engine uses for this policy's FORECAST actions.
        num_groups: Groups the policy was built for, or ``None`` if it fits any number.
        feature_names: Observation features the policy expects, or ``None`` if it reads only named signals.
        trained_options: Engine options the policy was trained with (``groups``, ``probe_blocks``,
            ``forecast_order``), or ``None``; ``runtime.enable_cache`` takes the options it is not given from them.
        required_signals: Signals the engine must keep that it otherwise skips (``"accumulated_input_change"``).
        masks_actions: Whether ``act`` returns only actions in range that ``observation.action_mask`` allows, so
            the engine need not check and map them.
    """

    forecast_order: int = 1
    num_groups: int | None = None
    feature_names: tuple[str, ...] | None = None
    trained_options: EngineOptions | None = None
    required_signals: tuple[str, ...] = ()
    masks_actions: bool = False

    @abstractmethod
    def act(self, observation: Observation) -> torch.Tensor:
        """Returns ``(samples, groups)`` int64 actions (values of :class:`runtime.Action`).

        Impossible actions (see ``observation.action_mask``) are mapped by the engine to the nearest possible
        one (FORECAST -> REUSE -> COMPUTE), so a policy may ignore the mask.
        """

    @property
    def engine_options(self) -> dict[str, Any]:
        """``trained_options`` as plain JSON values, as an exported policy's manifest records them (``{}``: none)."""
        return {} if self.trained_options is None else self.trained_options.to_dict(TRAINED_OPTIONS)

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


def trained_options(options: EngineOptions | Mapping[str, Any] | None, num_groups: int) -> EngineOptions:
    """The engine options a policy acting on ``num_groups`` groups records, checked as the policy is built.

    Args:
        options: :class:`runtime.EngineOptions` setting ``groups``, ``probe_blocks`` and ``forecast_order``, or
            a mapping of exactly these (an exported manifest's ``engine_options``); ``None``: ``num_groups`` equal
            groups, one probe block, order 1. Other options (budget, layout) are not a policy's and are dropped.
        num_groups: Groups the policy chooses actions for.

    Returns:
        Options that set exactly the trained ones.

    Raises:
        ValueError: Naming the missing, unknown or bad option, or groups that do not make ``num_groups``.
    """
    if options is None:
        return EngineOptions(groups=num_groups, probe_blocks=1, forecast_order=1)
    if isinstance(options, Mapping):
        missing = [key for key in TRAINED_OPTIONS if key not in options]
        unknown = sorted(set(options) - set(TRAINED_OPTIONS))
        if missing or unknown:
            raise ValueError(
                f"engine_options: missing {missing}, unknown {unknown}; give exactly {list(TRAINED_OPTIONS)}."
            )
        try:
            options = EngineOptions(**options)
        except ValueError as error:
            raise ValueError(f"engine_options {error}") from None
    elif not isinstance(options, EngineOptions):
        raise ValueError(f"engine_options must be a mapping with keys {list(TRAINED_OPTIONS)}; got {options!r}.")
    unset = [name for name in TRAINED_OPTIONS if getattr(options, name) is None]
    if unset:
        raise ValueError(f"engine_options: {unset} not set; a policy records every one of {list(TRAINED_OPTIONS)}.")
    if options.num_groups != num_groups:
        groups = options.to_dict(["groups"])["groups"]
        raise ValueError(
            f"engine_options groups={groups} makes {options.num_groups} groups but the policy acts on {num_groups}."
        )
    return EngineOptions(**{name: getattr(options, name) for name in TRAINED_OPTIONS})

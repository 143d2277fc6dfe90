"""The cache engine's options: one typed record, validated once where it is built.

The same :class:`EngineOptions` travels from wherever options enter (a YAML config, an exported policy's manifest,
the keywords of :func:`runtime.enable_cache`) to the engine, so each value is checked in one place,
:meth:`EngineOptions.__post_init__`, whose errors name the option and say what to give instead.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .budget import check_budget
from .layout import CfgLayout

MAX_FORECAST_ORDER = 3
"""The highest Taylor order of FORECAST."""

CFG_LAYOUTS = ("auto", *(layout.value for layout in CfgLayout))
"""The values ``cfg_layout`` takes."""

TRAINED_OPTIONS = ("groups", "probe_blocks", "forecast_order")
"""The options a policy is trained with: an exported policy records them, and they are the engine's defaults for it."""


@dataclass(frozen=True)
class EngineOptions:
    """Options of the cache engine (:func:`runtime.enable_cache`).

    An option left ``None`` is taken from the policy (the :data:`TRAINED_OPTIONS` an exported policy records, see
    :meth:`with_defaults`), else the engine picks it as each attribute says.

    Attributes:
        groups: Number of block groups of equal relative depth, or the increasing depth fractions in (0, 1)
            where groups end. A policy chooses one action per group, so the same policy fits models of any depth.
            ``None``: 4, fewer on shallow models.
        probe_blocks: Always-computed blocks at the front (as FirstBlockCache / DBCache). Their residual's change
            is a cheap signal for the policy. 0 disables probing. ``None``: 1.
        forecast_order: Order (1 to 3) of the Taylor forecast of a group's residual. ``None``: the policy's
            ``forecast_order`` (1 if it has none).
        cfg_layout: ``"auto"`` (the convention of the pipeline that uses this transformer class, for batches
            whose two halves start from the same latents), ``"none"``, ``"cond_uncond"`` or ``"uncond_cond"``: how
            batched classifier-free-guidance halves are ordered.
        budget: Target compute fraction in (0, 1] shown to budget-conditioned policies, or ``None``.
        shared_decisions: Apply the samples' majority action per group to the whole batch.

    Raises:
        ValueError: Naming the option, for a value of the wrong type or out of range.
    """

    groups: int | tuple[float, ...] | None = None
    probe_blocks: int | None = None
    forecast_order: int | None = None
    cfg_layout: str = "auto"
    budget: float | None = None
    shared_decisions: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", _checked_groups(self.groups))
        if self.probe_blocks is not None:
            if not _is_whole(self.probe_blocks) or self.probe_blocks < 0:
                raise ValueError(f"probe_blocks={self.probe_blocks!r}: give a whole number >= 0 (0: no probe).")
            object.__setattr__(self, "probe_blocks", int(self.probe_blocks))
        if self.forecast_order is not None:
            if not _is_whole(self.forecast_order) or not 1 <= self.forecast_order <= MAX_FORECAST_ORDER:
                raise ValueError(
                    f"forecast_order={self.forecast_order!r}: use 1 to {MAX_FORECAST_ORDER}, or None for the policy's."
                )
            object.__setattr__(self, "forecast_order", int(self.forecast_order))
        if self.cfg_layout not in CFG_LAYOUTS:
            raise ValueError(f"cfg_layout={self.cfg_layout!r}: use one of {list(CFG_LAYOUTS)}.")
        if self.budget is not None:
            check_budget(self.budget, "budget")
        if not isinstance(self.shared_decisions, bool):
            raise ValueError(f"shared_decisions={self.shared_decisions!r}: give True or False.")

    @property
    def num_groups(self) -> int | None:
        """Groups these options make: ``groups``, or one more than its depth fractions (``None`` when unset)."""
        if self.groups is None or isinstance(self.groups, int):
            return self.groups
        return len(self.groups) + 1

    def with_defaults(self, defaults: EngineOptions | None) -> EngineOptions:
        """These options, with every one left ``None`` taken from ``defaults`` (e.g. a policy's trained options)."""
        if defaults is None:
            return self
        unset = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is None}
        return dataclasses.replace(self, **unset) if unset else self

    def replace(self, **changes: Any) -> EngineOptions:
        """A copy with ``changes`` (validated like any new options)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The options (or those in ``names``) as plain JSON values: ``groups`` fractions as a list."""
        data = {name: getattr(self, name) for name in (names or [f.name for f in dataclasses.fields(self)])}
        if isinstance(data.get("groups"), tuple):
            data["groups"] = list(data["groups"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineOptions:
        """Options from plain values, naming any unknown key.

        Raises:
            ValueError: For a key that is no option, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"engine options must be a mapping of option names to values; got {data!r}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"Unknown engine option(s) {unknown}; known: {known}.")
        return cls(**data)


CacheConfig = EngineOptions
"""The former name of :class:`EngineOptions`."""


def _checked_groups(groups: Any) -> int | tuple[float, ...] | None:
    """``groups`` as an int or a tuple of floats, checked."""
    if groups is None:
        return None
    if _is_whole(groups):
        if groups < 1:
            raise ValueError(f"groups={groups!r}: give a number of groups >= 1.")
        return int(groups)
    if isinstance(groups, Sequence) and not isinstance(groups, str) and all(_is_real(f) for f in groups):
        fractions = tuple(float(f) for f in groups)
        if any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise ValueError(
                f"groups={list(groups)}: depth fractions must increase strictly inside (0, 1), e.g. [0.25, 0.5, 0.75]."
            )
        return fractions
    raise ValueError(
        f"groups={groups!r}: give a number of groups, or the depth fractions where groups end, e.g. [0.25, 0.5, 0.75]."
    )


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)

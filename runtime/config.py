"""Validated options of the cache engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .layout import CfgLayout

MAX_FORECAST_ORDER = 3


@dataclass
class CacheConfig:
    """Options of :func:`runtime.enable_cache`.

    Attributes:
        groups: Number of block groups of equal relative depth, or the increasing depth fractions in (0, 1)
            where groups end. A policy chooses one action per group, so the same policy fits models of any depth.
        probe_blocks: Always-computed blocks at the front (as FirstBlockCache / DBCache). Their residual's change
            is a cheap signal for the policy. 0 disables probing.
        forecast_order: Order (1 to 3) of the Taylor forecast of a group's residual. ``None`` takes the policy's
            ``forecast_order`` (1 if it has none).
        cfg_layout: ``"auto"`` (the convention of the pipeline that uses this transformer class, for batches
            whose two halves start from the same latents), ``"none"``, ``"cond_uncond"`` or ``"uncond_cond"``: how
            batched classifier-free-guidance halves are ordered.
        budget: Target compute fraction in (0, 1] shown to budget-conditioned policies, or ``None``.
        shared_decisions: Apply the samples' majority action per group to the whole batch.
    """

    groups: int | Sequence[float] | None = None
    probe_blocks: int = 1
    forecast_order: int | None = None
    cfg_layout: str = "auto"
    budget: float | None = None
    shared_decisions: bool = False

    def __post_init__(self) -> None:
        if self.groups is not None and (
            isinstance(self.groups, bool) or not isinstance(self.groups, (int, list, tuple))
        ):
            raise ValueError(f"groups={self.groups!r}: give a number of groups or a list of depth fractions.")
        if isinstance(self.probe_blocks, bool) or not isinstance(self.probe_blocks, int) or self.probe_blocks < 0:
            raise ValueError(f"probe_blocks={self.probe_blocks!r}: give a whole number >= 0.")
        if self.forecast_order is not None and (
            not isinstance(self.forecast_order, int) or not 1 <= self.forecast_order <= MAX_FORECAST_ORDER
        ):
            raise ValueError(f"forecast_order={self.forecast_order!r}: use 1 to {MAX_FORECAST_ORDER}, or None.")
        allowed = ["auto", *(v.value for v in CfgLayout)]
        if self.cfg_layout not in allowed:
            raise ValueError(f"cfg_layout={self.cfg_layout!r}: use one of {allowed}.")
        if not isinstance(self.shared_decisions, bool):
            raise ValueError(f"shared_decisions={self.shared_decisions!r}: give True or False.")
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
                raise ValueError(f"budget={self.budget!r}: give a compute fraction in (0, 1], or None.")
            if not 0.0 < float(self.budget) <= 1.0:
                raise ValueError(f"budget={self.budget!r}: a compute fraction must lie in (0, 1].")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-serialisable values."""
        data = asdict(self)
        if data["groups"] is not None and not isinstance(data["groups"], int):
            data["groups"] = list(data["groups"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheConfig:
        """Builds a config, naming any unknown key."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown cache option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}.")
        return cls(**data)

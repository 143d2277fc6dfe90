"""Step and FLOP accounting: what each denoising step computed, in FLOPs of the hooked transformer, and the counters
``engine.summary()`` reports.

The first pass at a new input shape is measured with ``FlopCounterMode`` (:class:`~runtime.costs.CostMeter`); from
then on a step's FLOPs per row are those of everything outside the block groups (always computed: embeddings, the
final layer, the probe blocks) plus those of the groups the row computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .actions import NUM_ACTIONS, Action
from .costs import CostMeter, CostModel
from .devices import HOST
from .state import GenerationState


@dataclass
class EngineStats:
    """Counters since the engine was enabled or last reset (rows: batch rows, so CFG halves count twice)."""

    steps: int = 0
    generations: int = 0
    row_steps: int = 0
    probe_computed: int = 0
    group_computed: list[int] = field(default_factory=list)
    spent_flops: float = 0.0
    full_flops: float = 0.0
    reuses: int = 0
    forecasts: int = 0
    fallbacks: int = 0
    merged_groups: int = 0
    decisions: int = 0
    decision_seconds: float = 0.0
    action_counts: list[int] = field(default_factory=lambda: [0] * NUM_ACTIONS)
    side_passes: int = 0

    def reset(self) -> None:
        """Sets every counter back to zero, in place (the engine's parts share this object)."""
        vars(self).update(vars(EngineStats(group_computed=[0] * len(self.group_computed))))

    def summary(self, groups: list[list[int]], probe_blocks: int, num_blocks: int) -> dict[str, Any]:
        """The counters as ``engine.summary()`` reports them (see :meth:`runtime.CacheEngine.summary`).

        Args:
            groups: The blocks of each group.
            probe_blocks: Always-computed front blocks.
            num_blocks: Hooked blocks.
        """
        total = max(self.row_steps, 1)
        per_block = [1.0 if self.row_steps else 0.0] * probe_blocks
        for g, members in enumerate(groups):
            per_block += [self.group_computed[g] / total] * len(members)
        computed = self.probe_computed * probe_blocks + sum(
            count * len(members) for count, members in zip(self.group_computed, groups, strict=True)
        )
        return {
            "computed_fraction": computed / (total * num_blocks) if self.row_steps else 1.0,
            "flops_speedup": self.full_flops / self.spent_flops if self.spent_flops > 0 else 1.0,
            "per_block": per_block,
            "reuses": self.reuses,
            "forecasts": self.forecasts,
            "fallbacks": self.fallbacks,
            "merged_groups": self.merged_groups,
            "steps": self.steps,
            "generations": self.generations,
            "decisions": self.decisions,
            "decision_seconds": self.decision_seconds,
            "actions": {a.name.lower(): self.action_counts[a] for a in Action},
            "side_passes": self.side_passes,
        }


class FlopAccount:
    """The hooked transformer's costs per input shape, and the FLOPs each step spends.

    Args:
        groups: The blocks of each group.
        probe_blocks: Always-computed front blocks.
        num_blocks: Hooked blocks.
        stats: The engine's counters, which every charged step updates.

    Attributes:
        costs: Per-row FLOPs at the input shape last measured, or ``None`` before the first pass.
        meter: The meter of the pass being measured, or ``None``.
        group_flops: ``(groups,)`` FLOPs per row of each group.
    """

    def __init__(self, groups: list[list[int]], probe_blocks: int, num_blocks: int, stats: EngineStats) -> None:
        self.groups = groups
        self.probe_blocks = probe_blocks
        self.num_blocks = num_blocks
        self.stats = stats
        self.costs: CostModel | None = None
        self.meter: CostMeter | None = None
        self.group_flops = torch.zeros(len(groups), dtype=torch.float64, device=HOST)
        self._fixed_flops = 0.0  # per row and step: everything outside the groups (always computed)
        self._step_flops: dict[tuple[int, ...], float] = {}  # per row, by the groups a shared step computes

    def start_pass(self, input_shapes: tuple, rows: int, new_generation: bool) -> CostMeter | None:
        """A meter for this pass when its input shapes have not been measured yet, else ``None``.

        Raises:
            RuntimeError: If the shapes change within a generation.
        """
        if self.costs is not None and self.costs.shape == input_shapes:
            return None
        if not new_generation:
            raise RuntimeError("Input shapes changed within a generation; the engine measures costs per shape.")
        self.meter = CostMeter(shape=input_shapes, rows=rows)
        return self.meter

    def finish_pass(self, meter: CostMeter) -> None:
        """Turns the measured pass into the costs every later step is charged with."""
        self.costs = meter.finish(self.num_blocks)
        self.group_flops = torch.stack([self.costs.block_flops[g].sum() for g in self.groups])
        self._step_flops = {}
        self._fixed_flops = self.costs.always_flops + float(self.costs.block_flops[: self.probe_blocks].sum())
        self.meter = None

    def charge_step(self, state: GenerationState) -> None:
        """Adds what each row of the finished step computed to the generation's and the engine's FLOPs and counters."""
        stats, decision = self.stats, state.decision
        full_flops = self.costs.full_flops
        if decision.shared is not None:  # every row did the same: one number for all
            computed_groups = tuple(g for g, action in enumerate(decision.shared) if action == Action.COMPUTE)
            step_flops = self._step_flops.get(computed_groups)
            if step_flops is None:
                step_flops = self._fixed_flops + float(self.group_flops[list(computed_groups)].sum())
                self._step_flops[computed_groups] = step_flops
            for g in computed_groups:
                stats.group_computed[g] += state.rows
            stats.spent_flops += step_flops * state.rows
            state.spent_flops += step_flops
            fraction = step_flops / full_flops if full_flops > 0 else math.nan  # (a model of no FLOPs: 0 / 0)
            state.last_step_fraction = torch.full((state.rows,), fraction, dtype=torch.float64, device=HOST)
        else:
            computed = decision.computes  # fallbacks included
            spent = self._fixed_flops + computed.double() @ self.group_flops
            for g, count in enumerate(computed.sum(dim=0).tolist()):
                stats.group_computed[g] += count
            stats.spent_flops += float(spent.sum())
            state.spent_flops += spent
            state.last_step_fraction = spent / full_flops
        state.full_flops += full_flops
        stats.probe_computed += state.rows
        stats.row_steps += state.rows
        stats.full_flops += full_flops * state.rows
        stats.steps += 1

    def charge_side_pass(self, blocks: list[int], rows: int) -> None:
        """Counts an uncached side pass of ``rows`` rows that ran ``blocks`` as computed on both sides of the
        speedup (the uncached pipeline runs the same pass)."""
        flops = (self.costs.always_flops + float(self.costs.block_flops[blocks].sum())) * rows
        self.stats.spent_flops += flops
        self.stats.full_flops += flops
        self.stats.side_passes += 1

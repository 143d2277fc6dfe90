"""FLOP costs of a transformer's blocks and of the parts that always run, measured with ``FlopCounterMode``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from .devices import HOST


@dataclass
class CostModel:
    """Per-row FLOPs of one forward pass at one input shape.

    Attributes:
        shape: Input shapes (without the batch dimension) the costs were measured at.
        block_flops: ``(blocks,)`` FLOPs of each hooked block per batch row.
        always_flops: FLOPs per row of everything outside the hooked blocks (embeddings, final layer).
        full_flops: FLOPs per row of an uncached forward pass.
    """

    shape: tuple[int, ...]
    block_flops: torch.Tensor
    always_flops: float
    full_flops: float = field(init=False)

    def __post_init__(self) -> None:
        self.full_flops = self.always_flops + float(self.block_flops.sum())


@dataclass
class CostMeter:
    """Measures a forward pass: the root opens it, each block records the FLOPs of its own call.

    Attributes:
        counter: The active flop counter.
        shape: Input shapes (without the batch dimension) of the measured pass, the key of its costs.
        rows: Batch rows of the measured pass.
        block_flops: FLOPs each block's call used, by block index.
        engine_flops: FLOPs of the engine's own work in the pass (the policy's decision), left out of the costs.
    """

    counter: FlopCounterMode = field(default_factory=lambda: FlopCounterMode(display=False))
    shape: tuple = ()
    rows: int = 1
    block_flops: dict[int, float] = field(default_factory=dict)
    engine_flops: float = 0.0

    def total(self) -> int:
        """FLOPs counted so far in this pass."""
        return self.counter.get_total_flops()

    def finish(self, num_blocks: int) -> CostModel:
        """Turns the measured pass into per-row costs."""
        missing = sorted(set(range(num_blocks)) - set(self.block_flops))
        if missing:
            raise RuntimeError(
                f"Blocks {missing} did not run in the measured forward pass: the transformer skipped hooked blocks, "
                "so their cost is unknown."
            )
        measured = [self.block_flops[i] for i in range(num_blocks)]
        blocks = torch.tensor(measured, dtype=torch.float64, device=HOST) / self.rows
        always = max((float(self.total()) - self.engine_flops) / self.rows - float(blocks.sum()), 0.0)
        return CostModel(shape=self.shape, block_flops=blocks, always_flops=always)

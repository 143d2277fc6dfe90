"""The SB3 logger output that sends training's scalars to the W&B run of :func:`reporting.tracking.start_run`."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter


class WandbOutputFormat(KVWriter):
    """An SB3 logger output that sends every logged scalar to W&B (no TensorBoard needed).

    Args:
        run: The W&B run.
    """

    def __init__(self, run: Any) -> None:
        self.run = run

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        scalars = {}
        for key, value in key_values.items():
            excluded = key_excluded.get(key) or ()
            if "wandb" in excluded:
                continue
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
                scalars[key] = float(value)
        if scalars:
            self.run.log({**scalars, "global_step": step})

    def close(self) -> None:
        pass

"""SB3 callbacks: progress bar, atomic checkpoints, and held-out evaluation that exports the best policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from .checkpoints import save_checkpoint


class ProgressBarCallback(BaseCallback):
    """A tqdm bar over the run's total timesteps (continuing from the checkpoint on resume)."""

    def __init__(self, total_timesteps: int) -> None:
        super().__init__()
        self.total_timesteps = total_timesteps
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total_timesteps, initial=self.model.num_timesteps, unit="step", desc="training")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class CheckpointCallback(BaseCallback):
    """Saves an atomic checkpoint every ``every_timesteps`` steps and at the end of training.

    Args:
        folder: Checkpoint folder.
        every_timesteps: Interval.
        state: Returns the run state to store beside the model (run id, best score, ...).
    """

    def __init__(self, folder: Path, every_timesteps: int, state: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self.folder = folder
        self.every_timesteps = every_timesteps
        self.state = state
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        if self.model.num_timesteps - self._last >= self.every_timesteps:
            self.save()
        return True

    def _on_training_end(self) -> None:
        self.save()

    def save(self) -> None:
        """Writes the checkpoint now."""
        save_checkpoint(self.folder, self.model, self.model.get_vec_normalize_env(), self.state())
        self._last = self.model.num_timesteps


class EvaluationCallback(BaseCallback):
    """Runs ``evaluate(model)`` every ``every_timesteps`` steps, after the policy update that follows a rollout."""

    def __init__(self, every_timesteps: int, evaluate: Callable[[Any], None]) -> None:
        super().__init__()
        self.every_timesteps = every_timesteps
        self.evaluate = evaluate
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps - self._last >= self.every_timesteps:
            self._last = self.model.num_timesteps
            self.evaluate(self.model)

"""Switching a pipeline between the schedulers an environment draws, each built once from the pipeline's own."""

from __future__ import annotations

from typing import Any

from .pipelines import prepare_pipeline


class SchedulerSwitch:
    """Holds one scheduler per name, each built from the pipeline's original scheduler config, and swaps them in.

    Every scheduler is built exactly as :func:`envs.pipelines.prepare_pipeline` builds it from the pipeline's
    original scheduler (``"default"`` is that scheduler itself), so a switched pipeline generates what a pipeline
    prepared with that name generates. Schedulers keep no state across calls (``set_timesteps`` starts afresh), so
    one object per name serves every generation.

    Args:
        pipe: A pipeline as :func:`envs.pipelines.prepare_pipeline` returns it with ``"default"``.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._original = pipe.scheduler
        self._built: dict[str, Any] = {"default": pipe.scheduler}
        self.current = "default"

    def scheduler(self, name: str) -> Any:
        """The scheduler of ``name`` (built on first use)."""
        if name not in self._built:
            active = self.pipe.scheduler
            self.pipe.scheduler = self._original
            try:
                self._built[name] = prepare_pipeline(self.pipe, name).scheduler
            finally:
                self.pipe.scheduler = active
        return self._built[name]

    def use(self, name: str) -> Any:
        """Makes ``name``'s scheduler the pipeline's; returns it."""
        self.pipe.scheduler = self.scheduler(name)
        self.current = name
        return self.pipe.scheduler

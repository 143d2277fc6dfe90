"""The methods the benchmark compares: an interface and the engine's policies (:mod:`.grid` builds them all).

A :class:`Method` is one method at one knob setting. The runner attaches it to a pipeline's transformer, generates
inside :meth:`Method.generation` (which starts every generation from a fresh cache), and detaches it again, so the
uncached runs it is timed against use the plain, unhooked pipeline.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import runtime
from envs.pipelines import generate

FAMILIES = ("learned", "baseline", "diffusers", "oracle")
"""Row families: the learned policy (and its static replay), the engine's hand-designed policies, diffusers' own
caches, and the per-sample oracle (an upper bound no causal policy reaches, see :mod:`.oracle`)."""

LEARNED_NAME = "CachePilot (learned)"
"""Method name of the learned policy deciding per sample."""

SHARED_NAME = "CachePilot (learned, shared)"
"""Method name of the learned policy with one decision per group for the whole batch."""


@dataclass(frozen=True)
class Settings:
    """What every generation of a benchmark run uses.

    Attributes:
        conditions: One condition (class label or prompt) per sample.
        seeds: One seed per sample.
        steps: Denoising steps.
        guidance: Classifier-free guidance scale.
        warmup_steps: Steps of short, untimed generations (warm-up, engine cost measurement).
    """

    conditions: tuple[int | str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    warmup_steps: int = 2

    def run(self, pipe: Any, *, steps: int | None = None, samples: int | None = None) -> torch.Tensor:
        """Generates (under ``torch.inference_mode``) the first ``samples`` samples with ``steps`` steps."""
        count = len(self.seeds) if samples is None else samples
        with torch.inference_mode():
            return generate(pipe, self.conditions[:count], self.seeds[:count], steps or self.steps, self.guidance)


class Method(ABC):
    """One caching method at one knob setting.

    Attributes:
        name: Method name, shared by all its knob settings (one line in the plot).
        family: ``"learned"``, ``"baseline"`` (the engine's hand-designed policies) or ``"diffusers"``.
        knob: The knob setting, e.g. ``"N=3"`` or ``"threshold=0.1"``.
        counts_own_flops: Whether :meth:`flops_speedup` reads the method's own counters; otherwise the runner
            counts FLOPs with ``FlopCounterMode``.
    """

    name: str
    family: str
    knob: str
    counts_own_flops: bool = False

    def prepare(self, pipe: Any, settings: Settings) -> None:  # noqa: B027 (optional hook)
        """One-off work before the first attach, e.g. a calibration run (untimed)."""

    @abstractmethod
    def attach(self, pipe: Any, settings: Settings) -> None:
        """Hooks the method into ``pipe.transformer`` (untimed; may run a short generation)."""

    @abstractmethod
    def detach(self, pipe: Any) -> None:
        """Removes every hook the method added; the transformer is as before."""

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """Wraps one generation: starts it from an empty cache."""
        yield

    def flops_speedup(self) -> float | None:
        """Uncached over executed FLOPs of the last generation, from the method's own counters, or ``None``."""
        return None

    def info(self) -> dict[str, Any]:
        """Extra row fields describing the last generation (e.g. how many modules were hooked)."""
        return {}

    def __repr__(self) -> str:
        return f"{self.name} ({self.knob})"


class EngineMethod(Method):
    """A policy run by CachePilot's engine (``runtime.enable_cache``); FLOPs come from the engine's counters.

    Args:
        name: Method name.
        family: Row family.
        knob: Knob description.
        policy: Returns the policy; called at every attach, so a stateful policy starts afresh each time.
        engine_options: Options for ``runtime.enable_cache`` (those left unset: the policy's own).
        budget: Compute budget shown to budget-conditioned policies.
    """

    counts_own_flops = True

    def __init__(
        self,
        name: str,
        family: str,
        knob: str,
        policy: Callable[[], Any],
        engine_options: runtime.EngineOptions | None = None,
        budget: float | None = None,
    ) -> None:
        self.name, self.family, self.knob = name, family, knob
        self.make_policy = policy
        self.engine_options = engine_options
        self.budget = budget
        self.engine: runtime.CacheEngine | None = None

    def attach(self, pipe: Any, settings: Settings) -> None:
        policy, options = self.make_policy(), self.engine_options
        self.engine = runtime.enable_cache(pipe, policy, options, budget=self.budget)
        # The engine measures its per-block costs with FlopCounterMode on its first pass: do that here, untimed.
        settings.run(pipe, steps=settings.warmup_steps, samples=1)
        self.engine.reset()

    def detach(self, pipe: Any) -> None:
        if self.engine is not None:
            runtime.disable_cache(pipe.transformer)
            self.engine = None

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        self.engine.reset()
        yield

    def flops_speedup(self) -> float | None:
        return float(self.engine.summary()["flops_speedup"]) if self.engine is not None else None

    def info(self) -> dict[str, Any]:
        summary = self.engine.summary() if self.engine is not None else {}
        return {key: summary[key] for key in ("computed_fraction", "fallbacks") if key in summary}

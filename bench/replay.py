"""The learned policy's own static replay: what its decisions are worth as one fixed table for every sample.

:class:`RecordedLearnedMethod` is the learned policy at one budget, as :class:`~.methods.EngineMethod` runs it, whose
decisions on the benchmark's samples are recorded once in an untimed generation (``policies.ActionRecorder``).
:class:`StaticReplayMethod` plays the majority schedule of those decisions (``ActionRecorder.static_replay``) as a
``policies.StaticSchedulePolicy`` for all samples, timed and scored like every other row. Where the samples never
disagree, the replay is the policy; the gap between them is what deciding per sample adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from policies import ActionRecorder, StaticSchedulePolicy
from policies.schedule import replay_options
from runtime import EngineOptions

from .methods import EngineMethod, Method, Settings

REPLAY_SUFFIX = ", static replay"
"""Added to the learned method's name (inside its parentheses) for the name of its replay."""


@dataclass(frozen=True)
class Recording:
    """The learned policy's decisions on the benchmark's samples at one budget.

    Attributes:
        schedule: ``(steps, groups)`` majority schedule of the decisions.
        disagreement: Share of the step × group cells where the samples did not all take the same action.
    """

    schedule: torch.Tensor
    disagreement: float


class RecordedLearnedMethod(EngineMethod):
    """The learned policy at one budget; its decisions on the benchmark's samples are recorded once, untimed.

    Its rows carry ``disagreement``, the share of step × group cells where the samples decided differently.

    Args:
        name: Method name.
        knob: Knob description.
        policy: The learned policy (the same object for every generation).
        budget: Compute budget.
        engine_options: Options for ``runtime.enable_cache`` (those left unset: the policy's own).
    """

    def __init__(
        self,
        name: str,
        knob: str,
        policy: Any,
        budget: float | None,
        engine_options: EngineOptions | None = None,
    ) -> None:
        super().__init__(name, "learned", knob, lambda: policy, engine_options, budget=budget)
        self.policy = policy
        self._recorded: tuple[Settings, Recording] | None = None

    def prepare(self, pipe: Any, settings: Settings) -> None:
        self.record(pipe, settings)

    def record(self, pipe: Any, settings: Settings) -> Recording:
        """The policy's decisions in one full generation of ``settings`` (run once per settings, untimed).

        The generation takes the path of a timed one (attach with its warm-up, a fresh cache, detach), with the
        policy wrapped in an :class:`~policies.ActionRecorder`, so it records the decisions the timed runs make.
        """
        if self._recorded is not None and self._recorded[0] == settings:
            return self._recorded[1]
        recorder = ActionRecorder(self.policy)
        self.make_policy = lambda: recorder
        try:
            self.attach(pipe, settings)
            recorder.actions.clear()  # the attach's warm-up decided too
            with self.generation():
                settings.run(pipe)
        finally:
            self.detach(pipe)
            self.make_policy = lambda: self.policy
        recording = Recording(recorder.static_replay(), recorder.disagreement())
        self._recorded = (settings, recording)
        return recording

    @property
    def recording(self) -> Recording | None:
        """The last recording, if any."""
        return self._recorded[1] if self._recorded is not None else None

    def info(self) -> dict[str, Any]:
        extra = {"disagreement": self.recording.disagreement} if self.recording is not None else {}
        return {**super().info(), **extra}


class StaticReplayMethod(EngineMethod):
    """The majority schedule of a learned method's own decisions on the benchmark's samples, for all of them.

    Its rows carry ``replay_of`` (the learned method's name) and that method's ``disagreement``.

    Args:
        source: The learned method whose decisions are replayed, at its knob.
    """

    def __init__(self, source: RecordedLearnedMethod) -> None:
        super().__init__(replay_name(source.name), "learned", source.knob, self._static, source.engine_options)
        self.source = source
        self.schedule: StaticSchedulePolicy | None = None

    def _static(self) -> StaticSchedulePolicy:
        if self.schedule is None:
            raise RuntimeError(f"{self}: prepare() records the learned policy's decisions before the first attach.")
        return self.schedule

    def prepare(self, pipe: Any, settings: Settings) -> None:
        recording = self.source.record(pipe, settings)
        ran_with = replay_options(self.source.policy, self.source.engine_options)
        self.schedule = StaticSchedulePolicy(recording.schedule, engine_options=ran_with)

    def info(self) -> dict[str, Any]:
        recording = self.source.recording
        extra = {"replay_of": self.source.name}
        if recording is not None:
            extra["disagreement"] = recording.disagreement
        return {**super().info(), **extra}


def replay_name(learned_name: str) -> str:
    """``"CachePilot (learned)"`` → ``"CachePilot (learned, static replay)"``."""
    if learned_name.endswith(")"):
        return learned_name[:-1] + REPLAY_SUFFIX + ")"
    return f"{learned_name} (static replay)"


def with_static_replays(learned: Sequence[RecordedLearnedMethod]) -> list[Method]:
    """The learned methods followed by the static replay of each."""
    return [*learned, *(StaticReplayMethod(method) for method in learned)]

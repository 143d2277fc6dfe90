"""One batched generation of an unmodified pipeline, paused at every cache decision.

The pipeline's own ``__call__`` runs in a worker thread with the cache engine hooked into its transformer. When
the engine asks its policy for a step's actions, the :class:`BridgePolicy` hands the observation to the caller
and waits for the actions, so the caller drives the denoising loop one step at a time. Exactly one of the two
threads runs at any moment, so results are deterministic.

The per-step latents are recorded from the pipeline's scheduler (``envs.pipelines.record_latents``), so any pipeline
works, also one without ``callback_on_step_end`` (``DiTPipeline``). Pipelines that run guidance as separate passes
of the transformer in ``cache_context`` (Wan, FLUX with true CFG) ask the engine twice per step; the bridge hands
the first decision of a step to the caller and repeats its actions for the step's other passes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime import Observation


class SessionAborted(Exception):
    """Raised inside the worker to unwind a generation that is abandoned before it finishes."""


@dataclass
class Decision:
    """The engine waits for actions at a step; ``observation`` is what its policy was given."""

    observation: Observation


@dataclass
class Finished:
    """The generation ended. ``images``: the pipeline's output, ``(samples, C, H, W)`` in [0, 1]."""

    images: torch.Tensor


class BridgePolicy:
    """A policy whose decisions come from another thread (the environment).

    Args:
        forecast_order: Taylor order of FORECAST.
        feature_names: Observation feature columns the engine builds for it (``None``: the default ones).
    """

    def __init__(self, forecast_order: int, feature_names: tuple[str, ...] | None = None) -> None:
        self.forecast_order = forecast_order
        self.feature_names = feature_names
        self.outbox: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self._last: tuple[int, torch.Tensor] | None = None  # (step index, actions) of the step's first pass

    def forget(self) -> None:
        """Starts a new generation: no step has been decided yet."""
        self._last = None

    def act(self, observation: Observation) -> torch.Tensor:
        step = int(observation.step_index)
        if self._last is not None and self._last[0] == step:  # another pass of the same step (e.g. "uncond")
            return self._last[1].clone()
        observation.features  # noqa: B018 (computed here, while the engine waits: it is sealed after act)
        self.outbox.put(Decision(observation))
        actions = self.inbox.get()
        if actions is None:
            raise SessionAborted
        self._last = (step, torch.as_tensor(actions).clone())
        return actions


class DenoisingSession:
    """Runs ``generate(latents)`` in a worker thread, yielding control at every decision.

    Args:
        bridge: The policy the engine in ``generate``'s transformer uses.
        generate: Calls the pipeline, appending each step's latents to the list it is given, and returns its
            images tensor.
    """

    def __init__(self, bridge: BridgePolicy, generate: Callable[[list[torch.Tensor]], torch.Tensor]) -> None:
        self.bridge = bridge
        self.latents: list[torch.Tensor] = []
        self._generate = generate
        self._thread: threading.Thread | None = None

    def start(self) -> Decision | Finished:
        """Starts the generation; returns its first decision."""
        self.bridge.forget()
        self._thread = threading.Thread(target=self._run, name="cachepilot-denoising", daemon=True)
        self._thread.start()
        return self._receive()

    def send(self, actions: torch.Tensor) -> Decision | Finished:
        """Answers the pending decision; returns the next decision, or the finished images."""
        self.bridge.inbox.put(actions)
        return self._receive()

    def abort(self) -> None:
        """Stops an unfinished generation and waits for its thread."""
        if self._thread is not None and self._thread.is_alive():
            self.bridge.inbox.put(None)
            self._thread.join()
        self._thread = None

    def _receive(self) -> Decision | Finished:
        message = self.bridge.outbox.get()
        if isinstance(message, BaseException):
            self._thread.join()
            raise RuntimeError("The denoising loop failed; see the cause above.") from message
        if isinstance(message, Finished):
            self._thread.join()
        return message

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                images = self._generate(self.latents)
            self.bridge.outbox.put(Finished(images))
        except SessionAborted:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self.bridge.outbox.put(error)

"""The Ray actor: one pipeline with the cache engine, serving every kind of pipeline work of a run.

A :class:`PipelineWorker` builds its pipeline once and then serves

* tasks (:meth:`PipelineWorker.run`): a module function ``task(worker, item)`` that uses ``worker.pipe``, e.g. a
  schedule-search generation, a validation point or benchmark rows (see :mod:`distributed.tasks`); tasks may keep
  what they reuse (an uncached reference) in ``worker.cache``;
* environment shards (:meth:`PipelineWorker.env_advance`): a sub-batch of the vector environment, one
  ``envs.episodes.EpisodeBatch`` whose engine is hooked into the pipeline for the whole episode;
* reference trajectories for the environment (:meth:`PipelineWorker.env_references`).

An episode's state is never only here: every call names the episode (its start, with its references, kept in Ray's
object store by the driver) and the actions taken so far. A worker that does not hold that episode at that step, a
restarted one, or one that ran a task in between (a task needs the pipeline unhooked), replays it: it begins the
episode again and repeats the actions. Generations are deterministic, so the replayed episode is the one it was.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import diffusers
import numpy as np
import ray
import torch

from envs.config import EnvConfig
from envs.episodes import EpisodeBatch, StepResult
from envs.sampling import SamplingSetting
from envs.schedulers import SchedulerSwitch


class PipelineWorker:
    """One pipeline (on one GPU, or CPU cores) with the cache engine.

    Args:
        build: Returns the pipeline (an ``envs.pipelines.Sampler``); called once per (re)start.
        threads: Torch CPU threads.
    """

    def __init__(self, build: Callable[[], Any], threads: int = 1) -> None:
        torch.set_num_threads(threads)
        diffusers.utils.logging.set_verbosity_error()
        self.pipe = build()
        self.schedulers = SchedulerSwitch(getattr(self.pipe, "pipe", self.pipe))
        self.cache: dict[Any, Any] = {}
        self.replayed_steps = 0
        self._main: EpisodeBatch | None = None  # the episode batch in this worker's own pipeline
        self._owner: int | None = None  # the shard whose episodes run in it
        self._copies: dict[int, EpisodeBatch] = {}  # further shards on this worker, each in a copy of the pipeline
        self._live: dict[int, tuple[Any, int]] = {}  # shard -> (episode, steps taken) its batch holds

    def ready(self) -> dict[str, Any]:
        """The worker's process id and whether Ray restarted it (its first call waits for the pipeline)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's own property warns about its own deprecated call
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        return {"pid": os.getpid(), "restarted": restarted}

    def stats(self) -> dict[str, Any]:
        """What the worker did: environment steps it replayed, and :meth:`ready`'s fields."""
        shards = sorted({*self._copies, *([self._owner] if self._owner is not None else [])})
        return {**self.ready(), "replayed_steps": self.replayed_steps, "shards": shards}

    def run(self, task: Callable[[PipelineWorker, Any], Any], item: Any) -> Any:
        """Runs ``task(self, item)`` with the pipeline unhooked (a held episode is replayed on its next step)."""
        self._release()
        return task(self, item)

    # -- environment shards ----------------------------------------------------------------------------------

    def env_references(
        self, config: EnvConfig, setting: SamplingSetting, conditions: Sequence[Any], seeds: Sequence[int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One uncached generation at ``setting`` in the environment's own way (engine hooked, not consulted)."""
        if self._owner is not None:
            self._live.pop(self._owner, None)  # its episode is abandoned for this generation
        return self._main_batch(config).generate_references(conditions, seeds, setting)

    def env_advance(
        self,
        index: int,
        config: EnvConfig,
        start: list[ray.ObjectRef],
        episode: Any,
        history: Sequence[np.ndarray],
        actions: np.ndarray | None,
    ) -> tuple[np.ndarray | StepResult, np.ndarray | None]:
        """Shard ``index``'s next step of ``episode``: its first observations (``actions`` ``None``) or the step
        ``actions`` take after ``history``; replays the episode first when this worker does not hold it there.

        Args:
            index: The shard.
            config: The environment's configuration.
            start: ``[ref]`` of the episode's ``envs.shards.ShardStart`` (in a list, so Ray fetches it only when a
                replay needs it).
            episode: The episode's name (unique in the cluster: the driver's environment and its count).
            history: The actions taken so far in this episode.
            actions: This step's ``(samples, groups)`` actions, or ``None`` for the first observations.

        Returns:
            The observations (or the step result) and the next action masks (``None`` once the episode is done).
        """
        batch = self._batch(index, config)
        if self._live.get(index) != (episode, len(history)):
            begun = ray.get(start[0])
            batch.begin(begun.conditions, begun.seeds, begun.budgets, begun.setting, references=begun.references)
            for taken in history:
                batch.step(np.array(taken))
            self.replayed_steps += len(history)
        if actions is None:
            self._live[index] = (episode, 0)
            return batch.observations(), batch.action_masks()
        result = batch.step(np.array(actions))  # a writable copy of Ray's read-only array
        self._live[index] = (episode, len(history) + 1)
        return result, None if result.done else batch.action_masks()

    def _batch(self, index: int, config: EnvConfig) -> EpisodeBatch:
        """Shard ``index``'s episode batch: in this worker's pipeline for its first shard, else in a copy (made
        anew for another environment configuration)."""
        if index in self._copies:
            if self._copies[index].config == config:
                return self._copies[index]
            self._copies.pop(index).close()
        if self._owner is None or self._owner == index:
            self._owner = index
            return self._main_batch(config)
        self._release()  # copy the pipeline without the engine's hooks
        self._copies[index] = EpisodeBatch(config, copy.deepcopy(self.pipe))
        return self._copies[index]

    def _main_batch(self, config: EnvConfig) -> EpisodeBatch:
        if self._main is not None and self._main.config != config:
            self._release()
        if self._main is None:
            self.schedulers.use("default")  # the batch's scheduler switch starts from the pipeline's own
            self._main = EpisodeBatch(config, self.pipe)
        return self._main

    def _release(self) -> None:
        """Unhooks the engine from this worker's pipeline; its shard's episode is replayed when next stepped."""
        if self._main is not None:
            self._main.close()
            self._main = None
        if self._owner is not None:
            self._live.pop(self._owner, None)

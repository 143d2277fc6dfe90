"""The schedule search and plain tasks on Ray workers: the local results, in item order, also when a worker dies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from distributed import WorkerPool
from distributed import search_schedules as search_on_workers
from distributed import search_settings as search_settings_on_workers
from envs.config import EnvConfig
from envs.pipelines import make_sampler
from envs.sampling import SamplingSetting
from reporting.schedule_search import ScheduleSearch
from reporting.setting_search import search_settings
from runtime import EngineOptions

OPTIONS = EngineOptions(groups=2, probe_blocks=0, forecast_order=1)
SAMPLES = {"conditions": [1, 2, 3], "seeds": [5, 6, 7], "guidance": 2.0, "engine_options": OPTIONS}


def test_searched_schedules_are_the_local_ones(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    """Two anchor settings (the second with another scheduler and step count, and more sweeps): every search's
    generations on the workers, each worker switching to the generation's scheduler."""
    budgets = [0.5, 0.25, 0.75]
    settings = [SamplingSetting("default", 4), SamplingSetting("dpmsolver++", 5)]
    options = {"sweeps": 1, "sweeps_at": {settings[1]: 2}, **SAMPLES}
    local = search_settings(tiny_env.model, settings, budgets, workers=1, env_config=tiny_env, **options)
    remote = search_settings_on_workers(env_pool, settings, budgets, **options)
    assert list(remote) == settings
    for setting in settings:
        assert [r.budget for r in remote[setting]] == budgets
        for mine, theirs in zip(local[setting], remote[setting], strict=True):
            np.testing.assert_array_equal(mine.schedule, theirs.schedule)
            assert (mine.psnr, mine.start_psnr, mine.evaluations) == (
                theirs.psnr,
                theirs.start_psnr,
                theirs.evaluations,
            )
    assert local[settings[0]][0].schedule.shape == (4, 2) and local[settings[1]][0].schedule.shape == (5, 2)


def test_per_sample_schedules_are_the_local_ones(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    search = ScheduleSearch(make_sampler(tiny_env, scheduler="default"), steps=4, **SAMPLES)
    local = search.search_per_sample(0.5, sweeps=1)
    (remote,) = search_on_workers(env_pool, [0.5], steps=4, sweeps=1, per_sample=True, **SAMPLES)
    assert len(remote) == 3
    for mine, theirs in zip(local, remote, strict=True):
        np.testing.assert_array_equal(mine.schedule, theirs.schedule)
        assert (mine.psnr, mine.evaluations) == (theirs.psnr, theirs.evaluations)


def square_once(worker: Any, item: tuple[int, str]) -> tuple[int, int]:
    """``item[0] ** 2`` and this worker's process id; the first attempt at item 3 kills the worker's process."""
    value, marker = item
    if value == 3 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # a crash, as a GPU's driver error or the OOM killer would end the actor
    torch.zeros(1)
    return value**2, os.getpid()


def test_a_killed_worker_is_restarted_and_its_task_redone_in_order(env_pool: WorkerPool, tmp_path: Path) -> None:
    marker = str(tmp_path / "crashed")
    results = env_pool.map(square_once, [(value, marker) for value in range(6)])
    assert [value for value, _ in results] == [value**2 for value in range(6)]  # every item, in item order
    assert os.path.exists(marker)
    info = ray.get([actor.ready.remote() for actor in env_pool.actors])
    assert sum(entry["restarted"] for entry in info) == 1  # Ray restarted the dead worker (max_restarts)

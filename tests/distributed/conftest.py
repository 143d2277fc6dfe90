"""A local Ray cluster of two CPUs for the whole session, and pools of two pipeline workers on the tiny digits DiT.

Ray starts once (about ten seconds) and each pool's workers load torch and the pipeline once; the tests share them.
The workers import the project and these tests from the repository (``PYTHONPATH``), as a cluster's nodes would
from their installed copy.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray  # the dev extra installs it (pip install -e '.[dev]'); these tests are never skipped
import torch

from distributed import WorkerPool
from envs.config import EnvConfig
from envs.pipelines import make_sampler

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The local runs compared with the workers use their thread count (one each): on the CPU, the sums of a
    matrix product split over more threads round differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """``ray.init(num_cpus=2)`` on this machine, shut down after the session."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "WANDB_MODE": "disabled"}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_env(tiny_digits_dir: Path) -> EnvConfig:
    """The tiny digits DiT as an environment: 4 steps, 2 groups, budgets drawn per episode."""
    return EnvConfig(model=str(tiny_digits_dir), num_inference_steps=4, groups=2, guidance_scale=2.0)


@pytest.fixture(scope="session")
def env_pool(ray_cluster: None, tiny_env: EnvConfig) -> Iterator[WorkerPool]:
    """Two workers holding the tiny environment's pipeline."""
    pool = WorkerPool(functools.partial(make_sampler, tiny_env, scheduler="default"), 2, cpus_per_worker=0.5)
    yield pool
    pool.close()

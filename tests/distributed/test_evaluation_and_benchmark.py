"""Validation points and benchmark rows on Ray workers: the local figures, in the local order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from bench.config import load_config
from bench.methods import EngineMethod, Settings
from bench.runner import run_benchmark
from distributed import WorkerPool, measure_on
from distributed.training import RayWorkers
from envs.config import EnvConfig
from envs.pipelines import make_sampler
from envs.sampling import SamplingSetting
from policies import FORA, TaylorSeer
from reporting.evaluation import evaluate_policy
from tests.digits_fixtures import tiny_digits_pipeline

TIMINGS = {"wall_speedup", "wall_speedups", "seconds", "uncached_seconds"}
"""Row fields measured by the clock: each worker's own."""


def test_validation_points_are_the_local_ones(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    setting = SamplingSetting("default", 4)
    options = {
        "conditions": [7, 8],
        "seeds": [11, 12],
        "guidance": 2.0,
        "engine_options": {"groups": 2, "probe_blocks": 0, "forecast_order": 1},
    }
    policy = TaylorSeer(2, 1)
    budgets = [None, None]  # the same point twice: one per worker
    local = evaluate_policy(make_sampler(tiny_env), policy, steps=4, budgets=budgets, replay=True, **options)
    workers = RayWorkers.__new__(RayWorkers)
    workers.pool = env_pool
    remote = workers.evaluate_policy(None, policy, setting=setting, budgets=budgets, replay=True, **options)
    for mine, theirs in zip(local, remote, strict=True):
        for field in ("flops_speedup", "psnr", "ssim", "replay_psnr", "disagreement", "compute_fraction"):
            assert getattr(mine, field) == getattr(theirs, field), field
        assert bool((mine.images == theirs.images).all())


class Broken(EngineMethod):
    """A cache that raises when attached."""

    def attach(self, pipe: Any, settings: Settings) -> None:
        raise TypeError("not for this model")


def bench_pipeline() -> Any:
    pipe = tiny_digits_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def bench_pool(ray_cluster: None) -> Iterator[WorkerPool]:
    pool = WorkerPool(bench_pipeline, 2, cpus_per_worker=0.5)
    yield pool
    pool.close()


def test_benchmark_rows_are_the_local_ones(bench_pool: WorkerPool) -> None:
    config = load_config(
        overrides={"seeds": "1000000-1000002", "steps": 4, "repeats": 1, "warmup_steps": 1, "flops_check": False}
    )
    options = {"groups": 2, "probe_blocks": 0}

    def methods() -> list[EngineMethod]:
        return [
            EngineMethod("FORA", "baseline", "N=2", lambda: FORA(2), options),
            Broken("Broken", "baseline", "-", lambda: FORA(2), options),
            EngineMethod("FORA", "baseline", "N=3", lambda: FORA(3), options),
            EngineMethod("TaylorSeer", "baseline", "N=2", lambda: TaylorSeer(2, 1), options),
        ]

    run = {"model_name": "tiny", "progress": False, "echo": lambda line: None}
    local = run_benchmark(bench_pipeline(), config, methods(), **run)
    remote = run_benchmark(bench_pipeline(), config, methods(), measure=measure_on(bench_pool), **run)
    assert [(r["method"], r["knob"]) for r in remote["rows"]] == [
        ("FORA", "N=2"),
        ("FORA", "N=3"),
        ("TaylorSeer", "N=2"),
    ]
    assert (
        remote["failures"] == local["failures"] and remote["failures"][0]["error"] == "TypeError: not for this model"
    )
    for mine, theirs in zip(local["rows"], remote["rows"], strict=True):
        assert {k: v for k, v in mine.items() if k not in TIMINGS} == {
            k: v for k, v in theirs.items() if k not in TIMINGS
        }
        assert theirs["wall_speedup"] > 0


def test_worker_options_follow_the_device() -> None:
    from agents.config import TrainConfig
    from distributed.training import worker_options

    cpu = TrainConfig()
    assert worker_options(cpu)["gpus_per_worker"] == 0.0
    cuda = dataclasses.replace(cpu, env=dataclasses.replace(cpu.env, device="cuda"))
    assert worker_options(cuda)["gpus_per_worker"] == 1.0

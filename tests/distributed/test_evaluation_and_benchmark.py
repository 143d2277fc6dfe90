"""Validation points and benchmark rows on Ray workers: the local figures, in the local order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench import cli
from bench.config import load_config
from bench.methods import EngineMethod, Settings
from bench.runner import run_benchmark
from distributed import WorkerPool, measure_on
from distributed.training import RayWorkers
from envs.config import EnvConfig
from envs.pipelines import make_sampler
from envs.sampling import SamplingSetting
from envs.schedulers import SchedulerSwitch
from policies import FORA, Policy, TaylorSeer, export_schedule
from reporting.evaluation import evaluate_policy
from runtime import Action, EngineOptions, Observation
from tests.digits_fixtures import tiny_digits_pipeline

OPTIONS = EngineOptions(groups=2, probe_blocks=0, forecast_order=1)
BENCHMARK_CONFIG = {
    "model": "tiny-random-dit",
    "repeats": 1,
    "warmup_steps": 1,
    "flops_check": False,
    "methods": {
        "fora": {"intervals": [2]},
        "first_block": {"thresholds": [0.1]},
        "teacache": {"thresholds": [0.2]},
        "taylorseer": {"intervals": [2], "orders": [1]},
        "delta_dit": {"intervals": [2], "spans": [1.0]},
        "diffusers_first_block": {"thresholds": [0.05]},
        "diffusers_taylorseer": {"intervals": [2], "orders": [1], "disable_cache_before_step": 1},
        "diffusers_magcache": {"thresholds": [0.5], "max_skip_steps": [2], "retention_ratio": 0.2},
        "learned": {"budgets": [0.5], "static_replay": True},
    },
}
"""A small benchmark: one knob of every method, the learned stand-in with its static replay."""

TIMINGS = {"wall_speedup", "wall_speedups", "seconds", "uncached_seconds"}
"""Row fields measured by the clock: each worker's own."""


def test_validation_points_are_the_local_ones(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    setting = SamplingSetting("default", 4)
    options = {
        "conditions": [7, 8],
        "seeds": [11, 12],
        "guidance": 2.0,
        "engine_options": OPTIONS,
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


class SolverOrderPolicy(Policy):
    """Reads the pipeline's scheduler: computes every step under a multistep solver (``solver_order`` 2/3 for
    DPM-Solver++), every other step under a first-order one (1/3 for DDIM)."""

    feature_names = ("time", "solver_order")

    def act(self, observation: Observation) -> torch.Tensor:
        multistep = observation.features[:, 1] > 0.5
        compute = multistep | (observation.step_index % 2 == 0)
        actions = torch.where(compute, int(Action.COMPUTE), int(Action.FORECAST))
        return actions[:, None].expand(-1, observation.num_groups).to(torch.int64)


def test_a_policy_reading_the_scheduler_is_validated_at_its_setting(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    """Workers pass the pipeline itself to the engine, so ``solver_order`` follows the scheduler they switch to."""
    options = {"conditions": [7, 8], "seeds": [11, 12], "guidance": 2.0, "engine_options": OPTIONS}
    workers = RayWorkers.__new__(RayWorkers)
    workers.pool = env_pool
    fractions = {}
    for setting in (SamplingSetting("ddim", 4), SamplingSetting("dpmsolver++", 4)):
        pipe = make_sampler(tiny_env)
        SchedulerSwitch(pipe.pipe).use(setting.scheduler)
        (local,) = evaluate_policy(pipe, SolverOrderPolicy(), steps=4, replay=True, **options)
        (remote,) = workers.evaluate_policy(None, SolverOrderPolicy(), setting=setting, replay=True, **options)
        for field in ("flops_speedup", "psnr", "ssim", "replay_psnr", "disagreement", "compute_fraction"):
            assert getattr(local, field) == getattr(remote, field), (setting, field)
        fractions[setting.scheduler] = remote.compute_fraction
    assert fractions["dpmsolver++"] == 1.0 > fractions["ddim"]  # the policy saw each worker's scheduler


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
    options = EngineOptions(groups=2, probe_blocks=0)

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


def test_benchmark_cli_measures_on_the_workers_it_is_given(
    bench_pool: WorkerPool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path = tmp_path / "benchmark.yaml"
    table = torch.ones(4, 2, dtype=torch.int64)  # a learned stand-in: computes the first step only
    table[0] = 0
    policy = export_schedule(tmp_path / "policy.safetensors", table, engine_options=OPTIONS)
    config_path.write_text(yaml.safe_dump(BENCHMARK_CONFIG))
    argv = [
        *("--config", str(config_path), "--steps", "4", "--seeds", "1000000-1000001", "--policy", str(policy)),
        *("--out", str(tmp_path / "out"), "--wandb-mode", "disabled", "--no-progress", "--workers", "2"),
    ]
    with pytest.raises(SystemExit):
        cli.main(argv)  # --workers without the Ray side (benchmark.py passes it)
    assert "run benchmark.py" in capsys.readouterr().err
    opened: list[tuple[int, str | None]] = []

    def distribute(config: Any, workers: int, address: str | None) -> tuple[Any, Any]:
        opened.append((workers, address))
        return measure_on(bench_pool), lambda: opened.append((0, "closed"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "load_model", lambda model, scheduler, **options: bench_pipeline())
        results = cli.main(argv, distribute=distribute)
    assert opened == [(2, None), (0, "closed")]
    assert results["workers"] == 2 and not results["failures"]
    names = [row["method"] for row in results["rows"]]
    assert {"FORA", "AlwaysCompute", "TaylorSeer"} <= set(names)
    assert any("static replay" in name for name in names)  # recorded on its worker, as in one process

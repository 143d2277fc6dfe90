"""Benchmark rows on the pipeline workers: ``benchmark.py --workers N``.

Each method (at one knob) is one work item: a worker prepares it and times it in its own rounds against its own
uncached runs (``bench.runner.measure_all`` on that one method), and the rows come back in method order. FLOPs,
PSNR, SSIM and every other row field but the timings are those of a one-process run; the timings are each worker's.
The uncached reference, the FLOP cross-check and the oracle's rows stay in the driver's pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from bench.config import BenchmarkConfig
from bench.methods import Method, Settings
from envs.pipelines import make_sampler, prepare_pipeline

from .cluster import WorkerPool
from .tasks import BenchmarkRows, measure_rows


def benchmark_pipeline(config: BenchmarkConfig) -> Any:
    """The benchmark's pipeline as ``benchmark.py`` builds it (its model, scheduler, dtype and device)."""
    return make_sampler(config, prepare_pipeline(config.model, config.scheduler, dtype=config.dtype))


def open_pool(config: BenchmarkConfig, workers: int, address: str | None = None, **options: Any) -> WorkerPool:
    """Workers holding the benchmark's pipeline (one GPU each when it runs on CUDA)."""
    gpus = 1.0 if str(config.device).startswith("cuda") else 0.0
    build = functools.partial(benchmark_pipeline, config)
    return WorkerPool(build, workers, address=address, gpus_per_worker=options.pop("gpus_per_worker", gpus), **options)


def measure_on(pool: WorkerPool) -> Callable[..., list[dict[str, Any]]]:
    """A ``measure`` for :func:`bench.runner.run_benchmark` that measures every method on the pool's workers."""

    def measure(
        pipe: Any,
        methods: Sequence[Method],
        settings: Settings,
        reference: Any,
        repeats: int,
        psnr_cap: float,
        on_failure: Callable[[Method, Exception], None],
        tick: Callable[[], None] = lambda: None,
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        items = [BenchmarkRows([method], settings, repeats, psnr_cap) for method in methods]
        for method, (found, failures) in zip(methods, pool.imap(measure_rows, items), strict=True):
            rows += found
            for _, error in failures:
                on_failure(method, error)
            for _ in range(1 + repeats):
                tick()
        return rows

    return measure

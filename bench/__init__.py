"""The benchmark: every caching method swept over its knob on one model, against the uncached pipeline.

``python benchmark.py`` runs it (see :mod:`bench.cli`); :func:`run_benchmark` is the programmatic entry.
"""

from .adaptivity import adaptivity_summary
from .config import BenchmarkConfig, load_config, parse_budgets, parse_classes, parse_seeds
from .grid import build_methods
from .methods import EngineMethod, Method, Settings
from .oracle import PerSampleOracle, build_upper_bounds
from .replay import RecordedLearnedMethod, StaticReplayMethod
from .report import pareto_front, psnr_at, summarize, write_results
from .runner import count_flops, flops_cross_check, run_benchmark

__all__ = [
    "BenchmarkConfig",
    "EngineMethod",
    "Method",
    "PerSampleOracle",
    "RecordedLearnedMethod",
    "Settings",
    "StaticReplayMethod",
    "adaptivity_summary",
    "build_methods",
    "build_upper_bounds",
    "count_flops",
    "flops_cross_check",
    "load_config",
    "parse_budgets",
    "parse_classes",
    "parse_seeds",
    "pareto_front",
    "psnr_at",
    "run_benchmark",
    "summarize",
    "write_results",
]

"""Benchmark CachePilot against hand-designed and diffusers caches on one model.

    python benchmark.py [--config configs/benchmark.yaml] [--model NAME] [--policy PATH] [--steps N] [--guidance G]
                        [--seeds A-B] [--classes LIST] [--budgets LIST] [--quick] [--out DIR]
                        [--wandb-mode online|offline|disabled] [--threads T] [--workers N] [--ray-address auto]

Writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/pareto.png``; see ``bench``. With ``--workers N`` (or
``--ray-address``) the methods are measured on N Ray workers (``pip install -e .[ray]``; docs/distributed.md).
"""

from typing import Any

from bench.cli import main


def distribute(config: Any, workers: int, address: str | None) -> tuple[Any, Any]:
    """Ray workers holding the benchmark's pipeline: the ``measure`` that uses them, and what ends them."""
    try:
        from distributed import measure_on, open_pool
    except ImportError as error:
        raise SystemExit(f"--workers needs Ray: pip install -e '.[ray]' ({error}).") from None
    pool = open_pool(config, workers, address)
    return measure_on(pool), pool.close


if __name__ == "__main__":
    main(distribute=distribute)

"""Benchmark CachePilot against hand-designed and diffusers caches on one model.

    python benchmark.py [--config configs/benchmark.yaml] [--model NAME] [--policy PATH] [--steps N] [--guidance G]
                        [--seeds A-B] [--classes LIST] [--budgets LIST] [--quick] [--out DIR]
                        [--wandb-mode online|offline|disabled] [--threads T]

Writes ``DIR/results.json``, ``DIR/results.md`` and ``DIR/pareto.png``; see ``bench``.
"""

from bench.cli import main

if __name__ == "__main__":
    main()

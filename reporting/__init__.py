"""Measuring and recording runs: policy evaluation, figures, run folders and W&B tracking.

Training (``agents``), the benchmark (``bench``) and ``generate.py`` all use these services, so they live in a package
of their own below the three, importing only ``envs``, ``policies``, ``runtime`` and ``zoo``: neither the benchmark
nor ``generate.py`` has to import the training package to evaluate a policy or start a W&B run. This file imports
nothing, so that a worker process can load :mod:`.process_guard` without the project.

Modules:
    evaluation: A policy inside an unmodified pipeline: FLOP and wall-clock speedup, fidelity, class accuracy.
    plots: Image grids and the speed/quality Pareto plot, as RGB arrays.
    outputs: Checking an output folder before a long run writes into it.
    tracking: W&B mode resolution and runs.
    schedule_search: Static cache schedules searched on given samples: training's teacher, the benchmark's
        per-sample oracle.
    setting_search: The teacher's searches, one per anchor setting and budget: here, in worker processes, or with
        each round's generations scored elsewhere (Ray workers).
    process_guard: Process-pool workers (of the schedule search) that exit with their parent.
"""

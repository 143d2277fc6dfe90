"""Training and benchmarking on Ray: pipeline workers on many GPUs or machines (``pip install -e .[ray]``).

Nothing in the rest of the project imports this package: ``train_agent.py --workers N`` and
``benchmark.py --workers N`` do, and hand its objects to the trainer (:class:`RayWorkers`, an
``agents.workers.Workers``) and to ``bench.run_benchmark`` (:func:`measure_on`). See docs/distributed.md.
"""

from .bench import measure_on, open_pool
from .cluster import WorkerPool, connect
from .search import search_schedules, search_settings
from .training import RayWorkers
from .vec_env import RayShards
from .worker import PipelineWorker

__all__ = [
    "PipelineWorker",
    "RayShards",
    "RayWorkers",
    "WorkerPool",
    "connect",
    "measure_on",
    "open_pool",
    "search_schedules",
    "search_settings",
]

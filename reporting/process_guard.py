"""Process-pool workers that exit with their parent, watched from before any heavy import.

A worker of a killed training run must not go on searching for it. Importing the project (torch, diffusers,
transformers) takes seconds, tens of seconds on a loaded machine; so the pool's initializer is this light module's
:func:`start`, which starts the watchdog first and only then imports and runs the real initializer. Its arguments
travel pickled as bytes, so that unpickling them does not import the project either.
"""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import time


def exit_with_parent(parent: int) -> None:
    """Ends this process once ``parent`` is gone (polled every second)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def start(parent: int, initializer: str, arguments: bytes) -> None:
    """Pool initializer: watches ``parent``, then calls ``initializer`` (``"module:function"``) with the arguments.

    Args:
        parent: Process id of the process that started the pool.
        initializer: The real initializer, as ``"package.module:function"``.
        arguments: ``pickle.dumps`` of its positional arguments.
    """
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    module, name = initializer.split(":")
    getattr(importlib.import_module(module), name)(*pickle.loads(arguments))


def initializer_arguments(initializer: str, *arguments: object) -> tuple[int, str, bytes]:
    """``initargs`` for :func:`start`: this process as the parent, the initializer and its pickled arguments."""
    return os.getpid(), initializer, pickle.dumps(arguments)

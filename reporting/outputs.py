"""Checking an output folder before a long run writes into it."""

from __future__ import annotations

import os
from pathlib import Path


def output_folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot take a run's files, or ``None`` when it can; a missing folder is created.

    Called before the work starts, so a bad ``--out`` stops the command at once instead of after the run.
    """
    blocking = path if path.exists() else next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"{blocking} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create it ({error.strerror or error})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None

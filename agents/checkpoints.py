"""Atomic checkpoints: a killed run never leaves a half-written file and loses at most one interval."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

MODEL_FILE = "model.zip"
NORMALIZATION_FILE = "vecnormalize.pkl"
STATE_FILE = "state.json"


def atomic_write(path: Path, write: Any) -> None:
    """Calls ``write(temporary_path)`` then renames the result onto ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_checkpoint(folder: Path, model: BaseAlgorithm, normalization: VecNormalize | None, state: dict) -> None:
    """Saves model, normalisation statistics and the run state (written last: it marks a complete checkpoint)."""
    atomic_write(folder / MODEL_FILE, lambda p: model.save(p))
    if normalization is not None:
        atomic_write(folder / NORMALIZATION_FILE, lambda p: normalization.save(p))
    payload = json.dumps({**state, "num_timesteps": int(model.num_timesteps)}, indent=2)
    atomic_write(folder / STATE_FILE, lambda p: Path(p).write_text(payload))


def read_state(folder: Path) -> dict[str, Any] | None:
    """The state of the last complete checkpoint in ``folder``, or ``None``.

    Temporary files a killed run left behind (never the checkpoint itself) are removed.
    """
    for leftover in folder.glob(".*-*"):
        leftover.unlink(missing_ok=True)
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())

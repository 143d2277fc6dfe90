"""Weights & Biases tracking: mode resolution (online when logged in, else offline) and runs."""

from __future__ import annotations

import netrc
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MODES = ("online", "offline", "disabled")
RESUME_WAIT_SECONDS = 60.0


def is_logged_in() -> bool:
    """Whether W&B credentials exist locally (``WANDB_API_KEY`` or a netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(requested: str | None) -> str:
    """The W&B mode to use: the requested one, else ``WANDB_MODE``, else online if logged in, otherwise offline.

    Raises:
        ValueError: For an unknown mode.
    """
    mode = requested or os.environ.get("WANDB_MODE") or ("online" if is_logged_in() else "offline")
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise ValueError(f"W&B mode {mode!r} is not one of {list(MODES)}.")
    return mode


def start_run(
    *,
    project: str,
    config: dict[str, Any],
    mode: str | None,
    out_dir: str | Path,
    job_type: str,
    run_id: str | None = None,
    name: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
) -> Any:
    """Starts (or, with ``run_id``, resumes) a W&B run whose files live under ``out_dir``.

    Args:
        project: W&B project.
        config: The full resolved configuration, logged as the run config.
        mode: ``"online"``, ``"offline"``, ``"disabled"`` or ``None`` for automatic (see :func:`resolve_mode`).
        out_dir: Folder of this job's outputs; W&B writes into ``out_dir/wandb``.
        job_type: ``"train"``, ``"benchmark"``, ...
        run_id: Resume this run id (the same run continues).
        name: Display name.
        entity: W&B entity (team or user).
        tags: Run tags.

    Returns:
        The ``wandb`` run (a no-op run when disabled).
    """
    import wandb

    mode = resolve_mode(mode)
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")  # our `agents` package is not the LLM SDK of that name
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    options = {
        "project": project,
        "entity": entity,
        "config": config,
        "mode": mode,
        "dir": str(out_dir),
        "job_type": job_type,
        "id": run_id,
        "resume": "allow" if run_id else None,
        "name": name,
        "tags": tags,
        "settings": wandb.Settings(silent=True, console="off"),
    }
    deadline = time.monotonic() + RESUME_WAIT_SECONDS
    while True:
        try:
            run = wandb.init(**options)
            break
        except Exception as error:  # noqa: BLE001 - W&B raises several types for a run still held elsewhere
            # After a crash the killed process's W&B helper can hold the run id for a while: wait for it.
            if not run_id or "in use" not in str(error) or time.monotonic() > deadline:
                raise
            wandb.teardown()  # a fresh service for the next try; this one has the failed attempt registered
            time.sleep(2.0)
    if mode == "offline":
        print(f"W&B is offline (not logged in). To upload this run later: wandb sync {run.dir.rsplit('/files', 1)[0]}")
    return run

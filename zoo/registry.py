"""Name → pipeline lookup for the shipped models, falling back to diffusers for anything else."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from zoo.pipelines import MiniDiTPipeline, MiniFlowPipeline

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"

SHIPPED_MODELS: dict[str, type[DiffusionPipeline]] = {
    "mini-dit-digits": MiniDiTPipeline,
    "mini-flow-digits": MiniFlowPipeline,
}


def list_models() -> list[str]:
    """Names of the models shipped in the repository."""
    return sorted(SHIPPED_MODELS)


def model_path(name: str) -> Path:
    """Folder holding a shipped model's ``save_pretrained`` output."""
    return ASSETS_DIR / name


PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {cls.__name__: cls for cls in SHIPPED_MODELS.values()}


def _pipeline_class(folder: Path) -> type[DiffusionPipeline]:
    """The zoo pipeline class named in a folder's ``model_index.json``, else ``DiffusionPipeline``."""
    index = folder / "model_index.json"
    if index.is_file():
        class_name = json.loads(index.read_text()).get("_class_name", "")
        return PIPELINE_CLASSES.get(class_name, DiffusionPipeline)
    return DiffusionPipeline


def load_pipeline(name_or_path: str | os.PathLike, **kwargs: Any) -> DiffusionPipeline:
    """Loads a pipeline by shipped name, local folder or hub id.

    Args:
        name_or_path: A shipped name (see :func:`list_models`), a folder written by ``save_pretrained``, or a hub
            id such as ``"PixArt-alpha/PixArt-XL-2-512x512"`` (needs network access or a local cache).
        **kwargs: Passed to ``from_pretrained`` (e.g. ``torch_dtype``).

    Returns:
        The loaded pipeline.

    Raises:
        FileNotFoundError: If a shipped model's folder is missing, or ``name_or_path`` is neither a shipped name nor an
            existing folder while ``HF_HUB_OFFLINE`` is set.
        ValueError: If the hub lookup fails; the message lists the shipped names.
    """
    name = str(name_or_path)
    if name in SHIPPED_MODELS:
        folder = model_path(name)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(
                f"Shipped model {name!r} has no weights in {folder}; run `python -m zoo.train {name}`."
            )
        return SHIPPED_MODELS[name].from_pretrained(str(folder), **kwargs)
    if Path(name).is_dir():
        return _pipeline_class(Path(name)).from_pretrained(name, **kwargs)
    hint = f"Shipped models: {', '.join(list_models())}; otherwise pass an existing folder or a hub model id."
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise FileNotFoundError(
            f"Unknown model {name!r}: not a shipped name nor an existing folder (HF_HUB_OFFLINE "
            f"is set, so the hub is not tried). {hint}"
        )
    try:
        return DiffusionPipeline.from_pretrained(name, **kwargs)
    except Exception as err:
        cause = str(err).replace(" Please check out the root cause in the stacktrace above.", "").strip()
        raise ValueError(f"Could not load {name!r} from the hub or the local cache ({cause}). {hint}") from err

"""Exported policies: one ``.safetensors`` file of plain weights plus a JSON manifest, loadable without SB3 or pickle.

The file's tensors are the actor's weights (``<layer>.weight``, ``<layer>.bias``) and, when observations are
normalised, ``normalization.mean`` / ``normalization.var`` (float64); a static schedule file holds one ``schedule``
``(steps, groups)`` int64 tensor. The safetensors metadata key ``"cachepilot"`` holds the manifest as JSON:

=========================  ===========================================================================================
key                        value
=========================  ===========================================================================================
``format_version``         ``1``
``kind``                   ``"policy"`` (the default when absent) or ``"schedule"``
``feature_names``          policy: observation features, in input order
``normalization``          policy: ``{"enabled": bool, "clip": float, "epsilon": float}``
``layers``                 policy: ``[{"name", "in_features", "out_features", "activation"}]``, input side first; the
                           last is the action head (``activation`` null, ``3 * num_groups`` outputs)
``num_steps``              schedule: rows of the table
``num_groups``             block groups an action is chosen for
``engine_options``         ``{"groups": int or depth fractions, "probe_blocks": int, "forecast_order": int}``
``budget_conditioned``     policy: whether it follows the ``budget`` feature
``model_family``           e.g. ``"dit"``, or null
``scheduler``              e.g. ``"DDIMScheduler"``, or null
``training_config_sha256`` SHA-256 of the training config (canonical JSON of a mapping), or null
``created_with``           package versions, e.g. ``{"torch": "2.13.0", "stable-baselines3": "2.9.2"}``
``trained_on``             optional: ``{"budget_range": [low, high] or null, "num_inference_steps": int or
                           [low, high], "schedulers": [class names]}`` (``schedulers`` may be absent, as in files
                           written before it existed); the engine warns when a budget outside ``budget_range`` is
                           asked for, ``generate.py`` and ``benchmark.py`` when the steps or the scheduler are not
                           among those trained on
=========================  ===========================================================================================

Reading checks the file's header by hand before safetensors touches it and never unpickles anything; every problem
raises :class:`PolicyFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from runtime import EngineOptions

from .learned import LearnedPolicy, training_config_sha256
from .loading import load_policy, load_schedule, read_manifest
from .manifest import FORMAT_VERSION, MANIFEST_KEY, MEAN, SCHEDULE, VAR, PolicyFormatError
from .sb3 import from_sb3  # re-exported here, next to export_policy
from .schedule import StaticSchedulePolicy

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "PolicyFormatError",
    "export_policy",
    "export_schedule",
    "from_sb3",
    "load_policy",
    "load_schedule",
    "read_manifest",
    "training_config_sha256",
]

# -- writing -----------------------------------------------------------------------------------------------------


def export_policy(
    path: str | Path,
    policy: LearnedPolicy,
    *,
    model_family: str | None = None,
    scheduler: str | None = None,
    training_config: Mapping[str, Any] | str | bytes | None = None,
) -> Path:
    """Writes a learned policy to one ``.safetensors`` file, atomically.

    Args:
        path: Destination file (its folder is created if needed).
        policy: The actor, e.g. from :func:`from_sb3`.
        model_family: Model family it was trained on; defaults to ``policy.manifest``'s.
        scheduler: Noise scheduler it was trained with; defaults to ``policy.manifest``'s.
        training_config: The training config (only its SHA-256 is stored); defaults to ``policy.manifest``'s hash.

    Returns:
        The written path.
    """
    modules = [*policy.hidden, policy.action_head]
    names = [f"hidden.{i}" for i in range(len(policy.hidden))] + ["action_head"]
    layers, tensors = [], {}
    for name, module, activation in zip(names, modules, [*policy.activations, None], strict=True):
        layers.append(
            {
                "name": name,
                "in_features": module.in_features,
                "out_features": module.out_features,
                "activation": activation,
            }
        )
        tensors[f"{name}.weight"], tensors[f"{name}.bias"] = module.weight, module.bias
    normalization = policy.normalization
    if normalization is not None:
        tensors[MEAN], tensors[VAR] = normalization.mean, normalization.var
    manifest = _provenance(policy.manifest, model_family, scheduler, training_config)
    manifest.update(
        kind="policy",
        feature_names=list(policy.feature_names),
        normalization={
            "enabled": normalization is not None,
            "clip": normalization.clip if normalization is not None else 10.0,
            "epsilon": normalization.epsilon if normalization is not None else 1e-8,
        },
        layers=layers,
        num_groups=policy.num_groups,
        engine_options=policy.engine_options,
        budget_conditioned=policy.budget_conditioned,
    )
    return _write(path, tensors, manifest)


def export_schedule(
    path: str | Path,
    schedule: StaticSchedulePolicy | torch.Tensor | np.ndarray,
    *,
    engine_options: EngineOptions | Mapping[str, Any] | None = None,
    model_family: str | None = None,
    scheduler: str | None = None,
    training_config: Mapping[str, Any] | str | bytes | None = None,
) -> Path:
    """Writes a static ``(steps, groups)`` schedule (see ``schedule_from_actions``) to a ``.safetensors`` file.

    Args:
        path: Destination file.
        schedule: A :class:`StaticSchedulePolicy` or its action table.
        engine_options: Engine options (default: the policy's, or equal groups, one probe block, order 1).
        model_family: Model family the schedule was made for.
        scheduler: Noise scheduler it was made with.
        training_config: Config of the policy it was distilled from (only its SHA-256 is stored).

    Returns:
        The written path.
    """
    if not isinstance(schedule, StaticSchedulePolicy) or engine_options is not None:
        table = schedule.schedule if isinstance(schedule, StaticSchedulePolicy) else schedule
        manifest = schedule.manifest if isinstance(schedule, StaticSchedulePolicy) else None
        schedule = StaticSchedulePolicy(table, engine_options=engine_options, manifest=manifest)
    manifest = _provenance(schedule.manifest, model_family, scheduler, training_config)
    manifest.update(
        kind="schedule",
        num_steps=schedule.num_steps,
        num_groups=schedule.num_groups,
        engine_options=schedule.engine_options,
    )
    return _write(path, {SCHEDULE: schedule.schedule}, manifest)


# -- helpers -----------------------------------------------------------------------------------------------------


def _provenance(
    previous: Mapping[str, Any],
    model_family: str | None,
    scheduler: str | None,
    training_config: Mapping[str, Any] | str | bytes | None,
) -> dict[str, Any]:
    manifest = dict(previous)
    manifest["format_version"] = FORMAT_VERSION
    manifest["model_family"] = model_family if model_family is not None else previous.get("model_family")
    manifest["scheduler"] = scheduler if scheduler is not None else previous.get("scheduler")
    sha = training_config_sha256(training_config) if training_config is not None else None
    manifest["training_config_sha256"] = sha or previous.get("training_config_sha256")
    manifest["created_with"] = {**dict(previous.get("created_with") or {}), **_versions()}
    return manifest


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("cachepilot", "torch", "safetensors", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _file_mode(path: Path) -> int:
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write(path: str | Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Saves to a temporary file in the destination folder, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, sort_keys=True, allow_nan=False)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={MANIFEST_KEY: text})
        os.chmod(temporary, _file_mode(path))  # mkstemp makes owner-only files; give the usual permissions
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path

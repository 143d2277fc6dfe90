"""Reading exported policies: checks every field with a clear error, needs torch and safetensors only, never unpickles.

See ``policies.export`` for the file format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors.torch import load_file

from .learned import ACTIVATIONS, LearnedPolicy, ObservationNormalization, check_architecture
from .manifest import (
    _FLOAT_DTYPES,
    _INT_DTYPES,
    _MAX_HEADER_BYTES,
    LAYER_KEYS,
    MANIFEST_KEY,
    MEAN,
    NORMALIZATION_KEYS,
    POLICY_KEYS,
    SCHEDULE,
    SCHEDULE_KEYS,
    SUPPORTED_VERSIONS,
    VAR,
    PolicyFormatError,
)
from .schedule import StaticSchedulePolicy


def load_policy(path: str | Path) -> LearnedPolicy | StaticSchedulePolicy:
    """Loads an exported policy (or static schedule) file; needs only torch and safetensors.

    Args:
        path: A file written by :func:`export_policy` or :func:`export_schedule`.

    Returns:
        A :class:`LearnedPolicy`, or a :class:`StaticSchedulePolicy` for a schedule file.

    Raises:
        PolicyFormatError: If the file is missing, not a safetensors file, or its manifest or tensors are wrong.
    """
    manifest, header = _read(path)
    if manifest["kind"] == "schedule":
        return _build_schedule(path, manifest, header)
    _require(path, manifest, POLICY_KEYS)
    names = manifest["feature_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        _fail(path, f"feature_names must be a non-empty list of strings; got {names!r}.")
    num_groups = _positive_int(path, manifest, "num_groups")
    layers = _check_layers(path, manifest["layers"])
    norm = _check_normalization(path, manifest["normalization"])
    if not isinstance(manifest["budget_conditioned"], bool):
        _fail(path, f"budget_conditioned must be true or false; got {manifest['budget_conditioned']!r}.")
    with _as_format_error(path):
        check_architecture([(s["name"], s["in_features"], s["out_features"]) for s in layers], len(names), num_groups)
    expected = {f"{s['name']}.{kind}": _shape(s, kind) for s in layers for kind in ("weight", "bias")}
    if norm["enabled"]:
        expected.update({MEAN: [len(names)], VAR: [len(names)]})
    tensors = _load_tensors(path, header, expected, _FLOAT_DTYPES)
    hidden = [_linear(tensors, s["name"]) for s in layers[:-1]]
    normalization = None
    if norm["enabled"]:
        with _as_format_error(path):
            normalization = ObservationNormalization(tensors[MEAN], tensors[VAR], norm["clip"], norm["epsilon"])
    with _as_format_error(path):
        return LearnedPolicy(
            hidden,
            _linear(tensors, layers[-1]["name"]),
            activation=[s["activation"] for s in layers[:-1]],
            feature_names=names,
            engine_options=manifest["engine_options"],
            normalization=normalization,
            budget_conditioned=manifest["budget_conditioned"],
            manifest=manifest,
        )


def load_schedule(path: str | Path) -> StaticSchedulePolicy:
    """Loads a file written by :func:`export_schedule`.

    Raises:
        PolicyFormatError: As :func:`load_policy`, and if the file holds a learned policy instead.
    """
    manifest, header = _read(path)
    if manifest["kind"] != "schedule":
        _fail(path, f"holds a {manifest['kind']!r}, not a schedule: load it with load_policy.")
    return _build_schedule(path, manifest, header)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an exported file (format version checked, nothing else), without loading any tensor."""
    return _read(path)[0]


def _build_schedule(path: str | Path, manifest: dict[str, Any], header: dict[str, Any]) -> StaticSchedulePolicy:
    _require(path, manifest, SCHEDULE_KEYS)
    steps, groups = _positive_int(path, manifest, "num_steps"), _positive_int(path, manifest, "num_groups")
    table = _load_tensors(path, header, {SCHEDULE: [steps, groups]}, _INT_DTYPES)[SCHEDULE]
    with _as_format_error(path):
        return StaticSchedulePolicy(table, engine_options=manifest["engine_options"], manifest=manifest)


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checks the safetensors header by hand; returns the manifest (version and kind checked) and the header."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file.")
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        declared = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        raw = file.read(declared) if 0 < declared <= min(size - 8, _MAX_HEADER_BYTES) else b""
    if not raw:
        _fail(path, f"not a safetensors file ({_describe(prefix, size, declared)}).")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # (absurdly nested JSON)
        header = None
    if not isinstance(header, dict):
        _fail(path, "not a safetensors file: its header is not a JSON object.")
    data_size = size - 8 - declared
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
            _fail(path, f"not a valid safetensors file: tensor {name!r} has no data offsets.")
        if offsets[1] > data_size:
            _fail(path, f"truncated: tensor {name!r} ends at byte {offsets[1]} of a {data_size}-byte data section.")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or MANIFEST_KEY not in metadata:
        _fail(
            path,
            f"a safetensors file without a CachePilot manifest (metadata key {MANIFEST_KEY!r}); "
            "write policies with policies.export_policy.",
        )
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except (TypeError, json.JSONDecodeError, RecursionError) as error:
        _fail(path, f"the manifest (metadata key {MANIFEST_KEY!r}) is not valid JSON: {error}.")
    if not isinstance(manifest, dict):
        _fail(path, f"the manifest must be a JSON object; got {type(manifest).__name__}.")
    version = manifest.get("format_version")
    if version is None:
        _fail(path, "the manifest has no format_version.")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        _fail(
            path,
            f"format_version {version!r} is not supported: this CachePilot reads format version(s) "
            f"{list(SUPPORTED_VERSIONS)}; re-export the policy or use a matching CachePilot release.",
        )
    manifest.setdefault("kind", "policy")
    if manifest["kind"] not in ("policy", "schedule"):
        _fail(path, f"unknown kind {manifest['kind']!r}; expected 'policy' or 'schedule'.")
    return manifest, header


def _load_tensors(
    path: str | Path, header: dict[str, Any], expected: dict[str, list[int]], dtypes: set[str]
) -> dict[str, torch.Tensor]:
    present = {name: info for name, info in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(present))
    if missing:
        _fail(path, f"missing tensor(s) {missing} that the manifest's layers need.")
    extra = sorted(set(present) - set(expected))
    if extra:
        _fail(path, f"unexpected tensor(s) {extra} that the manifest does not describe.")
    for name, shape in expected.items():
        given = present[name].get("shape")
        if not isinstance(given, list) or given != shape:
            _fail(path, f"tensor {name!r} has shape {given} but the manifest needs {shape}.")
        if not isinstance(present[name].get("dtype"), str) or present[name]["dtype"] not in dtypes:
            _fail(path, f"tensor {name!r} has dtype {present[name].get('dtype')}; expected one of {sorted(dtypes)}.")
    try:
        tensors = load_file(os.fspath(path))
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise PolicyFormatError(f"{path}: not a valid safetensors file: {error}") from error
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _fail(path, f"tensor {name!r} holds NaN or infinite values.")
    return tensors


def _check_layers(path: str | Path, layers: Any) -> list[dict[str, Any]]:
    if not isinstance(layers, list) or not layers or not all(isinstance(s, dict) for s in layers):
        _fail(path, "layers must be a non-empty list of {name, in_features, out_features, activation} objects.")
    for index, spec in enumerate(layers):
        missing = [key for key in LAYER_KEYS if key not in spec]
        if missing:
            _fail(path, f"layers[{index}] is missing key(s) {missing}.")
        if not isinstance(spec["name"], str) or spec["name"] in ("", "normalization"):
            _fail(path, f"layers[{index}] has a bad name {spec['name']!r}.")
        for key in ("in_features", "out_features"):
            if isinstance(spec[key], bool) or not isinstance(spec[key], int) or spec[key] < 1:
                _fail(path, f"layers[{index}].{key} must be a whole number >= 1; got {spec[key]!r}.")
        last = index == len(layers) - 1
        if last and spec["activation"] is not None:
            _fail(path, f"the last layer (the action head) must have activation null; got {spec['activation']!r}.")
        if not last and (not isinstance(spec["activation"], str) or spec["activation"] not in ACTIVATIONS):
            _fail(path, f"layers[{index}] activation {spec['activation']!r} is not one of {sorted(ACTIVATIONS)}.")
    names = [spec["name"] for spec in layers]
    if len(set(names)) != len(names):
        _fail(path, f"layer names {names} repeat a name.")
    return layers


def _check_normalization(path: str | Path, norm: Any) -> dict[str, Any]:
    if not isinstance(norm, dict) or any(key not in norm for key in NORMALIZATION_KEYS):
        _fail(path, f"normalization must be an object with keys {list(NORMALIZATION_KEYS)}; got {norm!r}.")
    if not isinstance(norm["enabled"], bool):
        _fail(path, f"normalization.enabled must be true or false; got {norm['enabled']!r}.")
    for key in ("clip", "epsilon"):
        value = norm[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            _fail(path, f"normalization.{key} must be a finite number >= 0; got {value!r}.")
    return norm


def _require(path: str | Path, manifest: dict[str, Any], keys: Sequence[str]) -> None:
    missing = [key for key in keys if key not in manifest]
    if missing:
        _fail(path, f"the manifest is missing key(s) {missing}.")
    for key in ("model_family", "scheduler", "training_config_sha256"):
        if manifest[key] is not None and not isinstance(manifest[key], str):
            _fail(path, f"{key} must be a string or null; got {manifest[key]!r}.")
    created = manifest["created_with"]
    if not isinstance(created, dict) or not all(isinstance(v, str) for v in created.values()):
        _fail(path, f"created_with must map package names to version strings; got {created!r}.")


def _positive_int(path: str | Path, manifest: dict[str, Any], key: str) -> int:
    value = manifest[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(path, f"{key} must be a whole number >= 1; got {value!r}.")
    return value


def _shape(spec: dict[str, Any], kind: str) -> list[int]:
    return [spec["out_features"], spec["in_features"]] if kind == "weight" else [spec["out_features"]]


def _linear(tensors: dict[str, torch.Tensor], name: str) -> torch.nn.Linear:
    weight = tensors[f"{name}.weight"]
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight.to(torch.float32))
        layer.bias.copy_(tensors[f"{name}.bias"].to(torch.float32))
    return layer


def _describe(prefix: bytes, size: int, declared: int) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return "it is a zip archive, e.g. a torch.save checkpoint; such files are never unpickled"
    if prefix[:1] == b"\x80":
        return "it looks like a pickle; such files are never unpickled"
    if len(prefix) < 8:
        return f"only {size} bytes, shorter than a safetensors header: truncated or empty"
    if 0 < declared <= _MAX_HEADER_BYTES:
        return f"truncated: its header needs {declared} bytes but only {size - 8} follow"
    return f"its first 8 bytes give an impossible header length {declared}: random bytes or another format"


def _fail(path: str | Path, problem: str) -> NoReturn:
    raise PolicyFormatError(f"{path}: {problem}")


@contextmanager
def _as_format_error(path: str | Path) -> Iterator[None]:
    """Re-raises a ``ValueError`` of the policy constructors as a :class:`PolicyFormatError` naming the file."""
    try:
        yield
    except PolicyFormatError:
        raise
    except ValueError as error:
        raise PolicyFormatError(f"{path}: {error}") from error

"""Broken, foreign and hostile policy files: each raises one ``PolicyFormatError`` that names the problem."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import runtime
from policies import LearnedPolicy, PolicyFormatError, export_policy, export_schedule, load_policy, load_schedule
from policies.export import MANIFEST_KEY, read_manifest
from policies.learned import ObservationNormalization

GROUPS = 2
NAMES = runtime.feature_names(GROUPS)


class Tripwire:
    """Unpickling this object creates the directory ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.mkdir, (self.path,)


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    """A valid exported policy: normalised features, one tanh hidden layer, an action head over two groups."""
    torch.manual_seed(0)
    policy = LearnedPolicy(
        [torch.nn.Linear(len(NAMES), 8)],
        torch.nn.Linear(8, 3 * GROUPS),
        feature_names=NAMES,
        engine_options={"groups": GROUPS, "probe_blocks": 1, "forecast_order": 1},
        normalization=ObservationNormalization(torch.zeros(len(NAMES)), torch.ones(len(NAMES))),
    )
    return export_policy(tmp_path / "good.safetensors", policy)


def rewrite(
    source: Path,
    edit_manifest: Callable[[dict[str, Any]], Any] | None = None,
    edit_tensors: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    manifest_text: str | None = None,
) -> Path:
    """Saves a copy of ``source`` with its manifest and tensors edited in place by the given callables."""
    tensors = load_file(source)
    manifest = read_manifest(source)
    if edit_manifest is not None:
        edit_manifest(manifest)
    if edit_tensors is not None:
        edit_tensors(tensors)
    target = source.with_name("edited.safetensors")
    text = manifest_text if manifest_text is not None else json.dumps(manifest)
    save_file(tensors, target, metadata={MANIFEST_KEY: text})
    return target


def test_good_file_loads(good_file: Path) -> None:
    policy = load_policy(good_file)
    assert isinstance(policy, LearnedPolicy) and policy.num_groups == GROUPS
    assert policy.act_numpy(np.zeros((1, len(NAMES)), np.float32)).shape == (1, GROUPS)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFormatError, match="no such file"):
        load_policy(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("keep", [-4, 20, 5, 0], ids=["data", "header", "length-prefix", "empty"])
def test_truncated_file(good_file: Path, keep: int) -> None:
    good_file.write_bytes(good_file.read_bytes()[:keep])
    with pytest.raises(PolicyFormatError, match="truncated"):
        load_policy(good_file)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PolicyFormatError, match="not a safetensors file"):
        load_policy(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_is_never_unpickled(tmp_path: Path, writer: str) -> None:
    flag = tmp_path / "unpickled"
    path = tmp_path / "checkpoint.safetensors"
    payload = {"weights": torch.zeros(3), "hook": Tripwire(flag)}
    if writer == "pickle":
        with path.open("wb") as file:
            pickle.dump(payload, file)
    else:
        torch.save(payload, path)
    with pytest.raises(PolicyFormatError, match="never unpickled") as raised:
        load_policy(path)
    assert "zip archive" in str(raised.value) if writer == "torch.save" else "pickle" in str(raised.value)
    assert not flag.exists(), "load_policy unpickled the file"
    # The payload is live: unpickling it (as torch.load or pickle.load would) does trip the wire.
    if writer == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(io.BytesIO(path.read_bytes()), weights_only=False)
    assert flag.is_dir()


def test_safetensors_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    with pytest.raises(PolicyFormatError, match="without a CachePilot manifest"):
        load_policy(path)


def test_manifest_not_json(good_file: Path) -> None:
    with pytest.raises(PolicyFormatError, match="not valid JSON"):
        load_policy(rewrite(good_file, manifest_text="{format_version: 1"))


def test_wrong_format_version(good_file: Path) -> None:
    path = rewrite(good_file, edit_manifest=lambda m: m.update(format_version=2))
    with pytest.raises(PolicyFormatError, match=r"format_version 2 is not supported.*version\(s\) \[1\]"):
        load_policy(path)


def test_missing_manifest_keys(good_file: Path) -> None:
    def drop(manifest: dict[str, Any]) -> None:
        del manifest["layers"], manifest["num_groups"]

    with pytest.raises(PolicyFormatError, match=r"missing key\(s\) \['layers', 'num_groups'\]"):
        load_policy(rewrite(good_file, edit_manifest=drop))


def test_observation_size_mismatch(good_file: Path) -> None:
    path = rewrite(good_file, edit_manifest=lambda m: m["feature_names"].append("extra_feature"))
    with pytest.raises(PolicyFormatError, match="Observation size mismatch: 10 feature_names .* takes 9 inputs"):
        load_policy(path)


def test_action_head_size_mismatch(good_file: Path) -> None:
    path = rewrite(good_file, edit_manifest=lambda m: m.update(num_groups=3))
    with pytest.raises(PolicyFormatError, match=r"Action head size mismatch: 'action_head' gives 6 logits"):
        load_policy(path)


def test_missing_tensor(good_file: Path) -> None:
    path = rewrite(good_file, edit_tensors=lambda t: t.pop("hidden.0.bias"))
    with pytest.raises(PolicyFormatError, match=r"missing tensor\(s\) \['hidden.0.bias'\]"):
        load_policy(path)


def test_tensor_shape_not_matching_layers(good_file: Path) -> None:
    path = rewrite(good_file, edit_tensors=lambda t: t.update({"hidden.0.weight": torch.zeros(8, 10)}))
    with pytest.raises(
        PolicyFormatError, match=r"'hidden.0.weight' has shape \[8, 10\] but the manifest needs \[8, 9\]"
    ):
        load_policy(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["layers"][0].update(activation="swish"), "activation 'swish' is not one of"),
        (lambda m: m["normalization"].pop("clip"), "normalization must be an object with keys"),
        (lambda m: m["engine_options"].update(forecast_order=9), "forecast_order=9"),
        (lambda m: m.update(kind="checkpoint"), "unknown kind 'checkpoint'"),
    ],
    ids=["activation", "normalization", "engine-options", "kind"],
)
def test_bad_manifest_fields(good_file: Path, edit: Callable[[dict[str, Any]], Any], message: str) -> None:
    with pytest.raises(PolicyFormatError, match=message):
        load_policy(rewrite(good_file, edit_manifest=edit))


def test_non_finite_weights(good_file: Path) -> None:
    path = rewrite(good_file, edit_tensors=lambda t: t["action_head.weight"].fill_(float("nan")))
    with pytest.raises(PolicyFormatError, match="'action_head.weight' holds NaN"):
        load_policy(path)


def test_bad_schedule_table(tmp_path: Path) -> None:
    path = export_schedule(tmp_path / "schedule.safetensors", torch.zeros(4, 2, dtype=torch.int64))
    bad = rewrite(path, edit_tensors=lambda t: t["schedule"].fill_(5))
    with pytest.raises(PolicyFormatError, match=r"actions must lie in 0..2"):
        load_schedule(bad)
    bad = rewrite(path, edit_manifest=lambda m: m.update(num_steps=5))
    with pytest.raises(PolicyFormatError, match=r"'schedule' has shape \[4, 2\] but the manifest needs \[5, 2\]"):
        load_policy(bad)


def rewrite_header(source: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """Saves a copy of ``source`` whose raw safetensors header (tensor entries and metadata) ``edit`` changed."""
    data = source.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    edit(header)
    text = json.dumps(header).encode()
    target = source.with_name("edited-header.safetensors")
    target.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
    return target


def _set_manifest(header: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    edit(manifest)
    header["__metadata__"][MANIFEST_KEY] = json.dumps(manifest)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["hidden.0.bias"].update(shape=8), "'hidden.0.bias' has shape 8 but the manifest needs"),
        (lambda h: h["hidden.0.bias"].update(shape=None), "'hidden.0.bias' has shape None"),
        (lambda h: h["hidden.0.bias"].update(dtype=["F32"]), r"'hidden.0.bias' has dtype \['F32'\]"),
        (lambda h: _set_manifest(h, lambda m: m["layers"][0].update(activation=["tanh"])), "activation"),
        (lambda h: h["__metadata__"].update({MANIFEST_KEY: "[" * 100_000 + "]" * 100_000}), "not valid JSON"),
    ],
    ids=["shape-int", "shape-null", "dtype-list", "activation-list", "nested-manifest"],
)
def test_odd_json_values_are_format_errors(
    good_file: Path, edit: Callable[[dict[str, Any]], Any], message: str
) -> None:
    with pytest.raises(PolicyFormatError, match=message):
        load_policy(rewrite_header(good_file, edit))


def test_zero_variance_without_epsilon_is_rejected_and_odd_trained_on_is_ignored(good_file: Path) -> None:
    def zero_variance(tensors: dict[str, torch.Tensor]) -> None:
        tensors["normalization.var"].zero_()

    path = rewrite(good_file, edit_manifest=lambda m: m["normalization"].update(epsilon=0), edit_tensors=zero_variance)
    with pytest.raises(PolicyFormatError, match="var \\+ epsilon must be > 0"):
        load_policy(path)
    for trained_on in (["not", "a", "mapping"], {"budget_range": [0.5, 0.1]}):
        policy = load_policy(rewrite(good_file, edit_manifest=lambda m, t=trained_on: m.update(trained_on=t)))
        assert policy.budget_range is None

"""The diffusers internals CachePilot uses: all present in the installed release, and a moved one is named."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import diffusers
import pytest
import torch

from runtime import diffusers_internals
from runtime.diffusers_internals import HOOK_REGISTRY_ATTRIBUTE, HookRegistry, describe_missing, missing_names

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
REQUIRED = [(module, name) for module, names in diffusers_internals.REQUIRED_NAMES.items() for name in names]


def test_the_installed_diffusers_has_every_internal_name() -> None:
    missing = missing_names()
    assert not missing, describe_missing(missing)


@pytest.mark.parametrize(("module", "name"), REQUIRED)
def test_every_required_name_is_re_exported(module: str, name: str) -> None:
    assert name in diffusers_internals.__all__
    assert getattr(diffusers_internals, name) is getattr(importlib.import_module(module), name)


def test_a_moved_name_is_reported_with_the_diffusers_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr("diffusers.hooks._common._ATTENTION_CLASSES")
    missing = missing_names()
    assert missing == ["diffusers.hooks._common._ATTENTION_CLASSES"]
    message = describe_missing(missing)
    assert "diffusers.hooks._common._ATTENTION_CLASSES" in message
    assert f"diffusers {diffusers.__version__}" in message
    assert f"diffusers>={diffusers_internals.MINIMUM_DIFFUSERS}" in message


def test_a_renamed_private_attribute_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_init(self, state_cls, init_args=None, init_kwargs=None) -> None:  # as in diffusers 0.40 and earlier
        self._state_cls, self._init_args, self._init_kwargs = state_cls, init_args or (), init_kwargs or {}
        self._state_cache, self._current_context = {}, None

    monkeypatch.setattr(diffusers_internals.StateManager, "__init__", old_init)
    assert missing_names() == ["StateManager._context"]


def test_the_hook_registry_lives_under_the_named_attribute() -> None:
    module = torch.nn.Linear(2, 2)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    assert getattr(module, HOOK_REGISTRY_ATTRIBUTE) is registry


def test_pyproject_floor_is_the_minimum_release() -> None:
    floor = re.search(r'"diffusers>=([0-9.]+)"', PYPROJECT.read_text())
    assert floor is not None, "pyproject.toml names no diffusers floor"
    assert floor.group(1) == diffusers_internals.MINIMUM_DIFFUSERS

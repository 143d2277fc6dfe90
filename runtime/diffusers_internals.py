"""Every private or internal diffusers name CachePilot relies on, imported in one place.

diffusers' public cache API (``enable_cache``) cannot hook transformers without ``CacheMixin`` and keeps its
decision rules closed, so the engine and the benchmark build on the hook machinery underneath it:
``diffusers.hooks.hooks`` (hooks, registries, per-context state), the block registry of ``diffusers.hooks._helpers``,
the module lists of ``diffusers.hooks._common`` and the hook names of diffusers' own caches. None of these is
promised to stay; this module imports them once, so that a diffusers release that moves one fails here, with the
name and the installed version, rather than deep inside a generation.

:data:`REQUIRED_NAMES` lists the module-level names and :data:`REQUIRED_ATTRIBUTES` the private attributes read on
diffusers objects; :func:`missing_names` checks both against the installed diffusers.
"""

from __future__ import annotations

import importlib

import diffusers
import torch

MINIMUM_DIFFUSERS = "0.41.0"
"""The oldest diffusers release that has every name below (``CacheContext``, ``_set_cache_context``,
``StateManager._context``, ``HookRegistry.invalidate_child_registries_cache`` and
``TransformerBlockMetadata.encoder_hidden_states_argument_name`` first appear in 0.41.0)."""

REQUIRED_NAMES: dict[str, tuple[str, ...]] = {
    "diffusers.hooks.hooks": (
        "BaseState",
        "CacheContext",
        "HookRegistry",
        "ModelHook",
        "StateManager",
        "_set_cache_context",
    ),
    "diffusers.hooks._common": ("_ALL_TRANSFORMER_BLOCK_IDENTIFIERS", "_ATTENTION_CLASSES", "_FEEDFORWARD_CLASSES"),
    "diffusers.hooks._helpers": ("TransformerBlockMetadata", "TransformerBlockRegistry"),
    "diffusers.hooks.first_block_cache": ("_FBC_BLOCK_HOOK", "_FBC_LEADER_BLOCK_HOOK"),
    "diffusers.hooks.mag_cache": ("_MAG_CACHE_BLOCK_HOOK", "_MAG_CACHE_LEADER_BLOCK_HOOK"),
    "diffusers.hooks.taylorseer_cache": ("_TAYLORSEER_CACHE_HOOK",),
    "diffusers.models.cache_utils": ("CacheMixin",),
    "diffusers.utils.torch_utils": ("unwrap_module",),
}
"""Module-level names, by the diffusers module that defines them; each is re-exported here under its own name."""

HOOK_REGISTRY_ATTRIBUTE = "_diffusers_hook"
"""The attribute ``HookRegistry.check_if_exists_or_initialize`` stores a module's hook registry under."""

REQUIRED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "StateManager": ("_context", "_state_cache", "_state_cls", "_init_args", "_init_kwargs"),
    "HookRegistry": ("hooks", "get_hook", "remove_hook", "reset_stateful_hooks", "invalidate_child_registries_cache"),
    "TransformerBlockMetadata": (
        "hidden_states_argument_name",
        "encoder_hidden_states_argument_name",
        "return_hidden_states_index",
        "return_encoder_hidden_states_index",
        "_cached_parameter_indices",
        "_get_parameter_from_args_kwargs",
    ),
    "TransformerBlockRegistry": ("_registry", "_register", "get", "register"),
    "CacheMixin": ("cache_context",),
}
"""Attributes read or called on instances or classes of the names above (checked on a fresh instance)."""


def describe_missing(missing: list[str]) -> str:
    """The error for an installed diffusers that lacks ``missing``: the names, the version and what to do."""
    return (
        f"diffusers {diffusers.__version__} lacks {', '.join(missing)}, which CachePilot uses (it needs "
        f"diffusers>={MINIMUM_DIFFUSERS}; every such name is listed in runtime/diffusers_internals.py). Install a "
        "supported diffusers release, or adapt that module to where this release keeps the name."
    )


def missing_names() -> list[str]:
    """The required names and attributes the installed diffusers lacks, each as ``module.name`` or ``Class.attr``."""
    missing: list[str] = []
    found: dict[str, object] = {}
    for module_name, names in REQUIRED_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.extend(f"{module_name}.{name}" for name in names)
            continue
        for name in names:
            if hasattr(module, name):
                found[name] = getattr(module, name)
            else:
                missing.append(f"{module_name}.{name}")
    instances = _sample_instances(found)
    for owner, attributes in REQUIRED_ATTRIBUTES.items():
        if owner not in instances:
            continue  # already reported above
        missing.extend(f"{owner}.{a}" for a in attributes if not hasattr(instances[owner], a))
    return missing


def _sample_instances(found: dict[str, object]) -> dict[str, object]:
    """An instance (or, where building one needs a model, the class) of each owner of required attributes."""
    instances: dict[str, object] = {}
    if "StateManager" in found and "BaseState" in found:
        instances["StateManager"] = found["StateManager"](found["BaseState"])
    if "HookRegistry" in found:
        instances["HookRegistry"] = found["HookRegistry"](torch.nn.Identity())
    if "TransformerBlockMetadata" in found:
        instances["TransformerBlockMetadata"] = found["TransformerBlockMetadata"](return_hidden_states_index=0)
    for owner in ("TransformerBlockRegistry", "CacheMixin"):
        if owner in found:
            instances[owner] = found[owner]
    return instances


try:
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS, _ATTENTION_CLASSES, _FEEDFORWARD_CLASSES
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
    from diffusers.hooks.hooks import (
        BaseState,
        CacheContext,
        HookRegistry,
        ModelHook,
        StateManager,
        _set_cache_context,
    )
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK
    from diffusers.models.cache_utils import CacheMixin
    from diffusers.utils.torch_utils import unwrap_module
except ImportError as error:
    raise ImportError(describe_missing(missing_names() or [str(error)])) from error

__all__ = [
    "HOOK_REGISTRY_ATTRIBUTE",
    "MINIMUM_DIFFUSERS",
    "REQUIRED_ATTRIBUTES",
    "REQUIRED_NAMES",
    "BaseState",
    "CacheContext",
    "CacheMixin",
    "HookRegistry",
    "ModelHook",
    "StateManager",
    "TransformerBlockMetadata",
    "TransformerBlockRegistry",
    "_ALL_TRANSFORMER_BLOCK_IDENTIFIERS",
    "_ATTENTION_CLASSES",
    "_FBC_BLOCK_HOOK",
    "_FBC_LEADER_BLOCK_HOOK",
    "_FEEDFORWARD_CLASSES",
    "_MAG_CACHE_BLOCK_HOOK",
    "_MAG_CACHE_LEADER_BLOCK_HOOK",
    "_TAYLORSEER_CACHE_HOOK",
    "_set_cache_context",
    "describe_missing",
    "missing_names",
    "unwrap_module",
]

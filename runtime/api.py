"""The engine's public functions: hook it into a transformer, find it, remove it, or do all three around a block.

Example::

    import runtime
    from policies import TaylorSeer

    with runtime.cached(pipe.transformer, TaylorSeer(interval=3)) as engine:
        images = pipe(...).images
    print(engine.summary()["flops_speedup"])  # the transformer is exactly as before here

The engine registers one ``diffusers.hooks`` hook on the transformer (:class:`~runtime.hooks.RootHook`) and one on
each of its blocks (:class:`~runtime.hooks.BlockHook`); it patches nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import EngineOptions
from .decisions import PolicyLike, warn_outside_trained_budgets
from .diffusers_internals import HOOK_REGISTRY_ATTRIBUTE, HookRegistry
from .engine import CacheEngine
from .hooks import BLOCK_HOOK, ROOT_HOOK, BlockHook, RootHook
from .observations import SCHEDULER_FEATURES


def enable_cache(
    transformer: torch.nn.Module | Any,
    policy: PolicyLike,
    options: EngineOptions | None = None,
    *,
    scheduler: Any = None,
    groups: int | Sequence[float] | None = None,
    probe_blocks: int | None = None,
    forecast_order: int | None = None,
    cfg_layout: str | None = None,
    budget: float | None = None,
    shared_decisions: bool | None = None,
) -> CacheEngine:
    """Hooks the cache engine into a diffusers transformer.

    Options come from ``options``, then the keywords (each one given replaces ``options``' value), then, for those
    still unset, the policy's ``trained_options`` (what an exported policy was trained with), then the engine's
    defaults (see :class:`EngineOptions`).

    Args:
        transformer: Any transformer whose blocks diffusers' ``TransformerBlockRegistry`` knows (DiT, PixArt,
            SD3, Flux, Wan, ...), e.g. ``pipe.transformer`` of an unmodified pipeline; or the pipeline itself,
            whose transformer is hooked and whose scheduler the engine reads at every generation.
        policy: A policy object (``policies.enable_cache`` also takes the path of an exported policy).
        options: Engine options, e.g. from a config or a policy.
        scheduler: The pipeline's scheduler (or the pipeline), for policies that read it (feature
            ``solver_order``); taken from the pipeline when one is passed as ``transformer``.
        groups: Block groups in relative depth (default 4, fewer on shallow models, or what an exported policy
            was trained with).
        probe_blocks: Always-computed front blocks (default 1, or the exported policy's).
        forecast_order: Taylor order of FORECAST (default: the policy's).
        cfg_layout: Order of batched CFG halves: ``"auto"`` (the default), ``"none"``, ``"cond_uncond"``,
            ``"uncond_cond"``.
        budget: Target compute fraction for budget-conditioned policies (the speed knob).
        shared_decisions: One action per group for the whole batch (the samples' majority) instead of one per
            sample: on models small enough that a block's cost is mostly per call rather than per sample (CPU,
            tiny batches), a group computed for a few samples costs nearly as much time as for all of them.

    Returns:
        The engine; ``engine.summary()`` reports what was computed.

    Raises:
        TypeError: If ``transformer`` is neither a module nor a pipeline with a ``transformer`` module, or
            ``policy`` is a file path.
        ValueError: If the model has no supported blocks, the options do not fit it, caching is already on, or the
            policy reads the scheduler and none was given.
    """
    if not isinstance(transformer, torch.nn.Module):
        if not isinstance(getattr(transformer, "transformer", None), torch.nn.Module):
            raise TypeError(
                f"enable_cache takes a transformer module or a pipeline with one, got a {type(transformer).__name__}."
            )
        scheduler = transformer if scheduler is None else scheduler
        transformer = transformer.transformer
    if isinstance(policy, (str, Path)):
        raise TypeError(
            f"runtime.enable_cache takes a policy object, got the path {str(policy)!r}: load an exported policy with "
            "policies.enable_cache(transformer, path, ...) or policies.load_policy(path)."
        )
    if options is not None and not isinstance(options, EngineOptions):
        raise TypeError(
            f"options must be a runtime.EngineOptions, got a {type(options).__name__}: pass EngineOptions(...) or "
            "the options as keywords (groups=..., budget=...)."
        )
    given = dict(
        groups=groups,
        probe_blocks=probe_blocks,
        forecast_order=forecast_order,
        cfg_layout=cfg_layout,
        budget=budget,
        shared_decisions=shared_decisions,
    )
    options = (options or EngineOptions()).replace(**{k: v for k, v in given.items() if v is not None})
    options = options.with_defaults(getattr(policy, "trained_options", None))
    if get_engine(transformer) is not None:
        raise ValueError(
            "Caching is already enabled on this transformer: call runtime.disable_cache(transformer) first."
        )
    engine = CacheEngine(transformer, policy, options)
    if engine.reads_scheduler and scheduler is None:
        raise ValueError(
            f"The policy reads the pipeline's scheduler (features {sorted(SCHEDULER_FEATURES)}): pass the pipeline, "
            "enable_cache(pipe, ...), or scheduler=pipe.scheduler."
        )
    engine.set_scheduler(scheduler)
    if options.budget is not None:
        warn_outside_trained_budgets(policy, options.budget, options.budget)
    group_of = {block: g for g, members in enumerate(engine.groups) for block in members}
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    try:  # all hooks or none: a failure (e.g. a forward without a timestep) leaves the model as it was
        for index, block in enumerate(engine.blocks):
            block_registry = HookRegistry.check_if_exists_or_initialize(block.module)
            block_registry.register_hook(BlockHook(engine, index, block, group_of.get(index)), BLOCK_HOOK)
        registry.register_hook(RootHook(engine), ROOT_HOOK)
    except Exception:
        _remove_hooks(transformer, engine)
        raise
    registry.invalidate_child_registries_cache()
    return engine


def get_engine(transformer: torch.nn.Module | Any) -> CacheEngine | None:
    """The engine hooked into ``transformer`` (or a pipeline's transformer), or ``None``."""
    transformer = _transformer_of(transformer)
    registry = getattr(transformer, HOOK_REGISTRY_ATTRIBUTE, None)
    hook = registry.get_hook(ROOT_HOOK) if registry is not None else None
    return hook.engine if hook is not None else None


def disable_cache(transformer: torch.nn.Module | Any) -> None:
    """Removes the engine's hooks and cached tensors; the transformer (or a pipeline's) behaves exactly as before.

    The engine object keeps its statistics, so ``engine.summary()`` still reports the generations it cached.

    Raises:
        ValueError: If caching is not enabled on ``transformer``.
    """
    transformer = _transformer_of(transformer)
    engine = get_engine(transformer)
    if engine is None:
        raise ValueError("Caching is not enabled on this transformer; nothing to disable.")
    engine.state_manager.reset()
    _remove_hooks(transformer, engine)


@contextlib.contextmanager
def cached(
    transformer: torch.nn.Module | Any, policy: PolicyLike, options: EngineOptions | None = None, **keywords: Any
) -> Iterator[CacheEngine]:
    """:func:`enable_cache` for the length of a ``with`` block: yields the engine, and disables caching when the
    block ends, also on an error.

    The engine keeps its statistics after the block, so ``engine.summary()`` still reports what it cached.

    Args:
        transformer: As for :func:`enable_cache`.
        policy: As for :func:`enable_cache`.
        options: As for :func:`enable_cache`.
        **keywords: The keyword options of :func:`enable_cache` (``groups``, ``budget``, ...).

    Yields:
        The engine.
    """
    engine = enable_cache(transformer, policy, options, **keywords)
    try:
        yield engine
    finally:
        if get_engine(transformer) is engine:  # (the block may have disabled it already)
            disable_cache(transformer)


def _transformer_of(model: Any) -> Any:
    """``model`` itself, or the transformer of a pipeline."""
    if isinstance(model, torch.nn.Module):
        return model
    inner = getattr(model, "transformer", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def _remove_hooks(transformer: torch.nn.Module, engine: CacheEngine) -> None:
    """Removes whichever of the engine's hooks are registered, and registries left empty."""
    for module in [block.module for block in engine.blocks] + [transformer]:
        registry = getattr(module, HOOK_REGISTRY_ATTRIBUTE, None)
        if registry is None:
            continue
        registry.remove_hook(ROOT_HOOK if module is transformer else BLOCK_HOOK, recurse=False)
        if not registry.hooks:
            delattr(module, HOOK_REGISTRY_ATTRIBUTE)
    registry = getattr(transformer, HOOK_REGISTRY_ATTRIBUTE, None)
    if registry is not None:
        registry.invalidate_child_registries_cache()

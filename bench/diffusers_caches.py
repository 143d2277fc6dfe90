"""diffusers' own caches as benchmark methods: FirstBlockCache, TaylorSeer and MagCache through ``diffusers.hooks``.

They are applied with the functional API (``apply_first_block_cache`` / ``apply_taylorseer_cache`` /
``apply_mag_cache``), which works on any transformer, including ``DiTTransformer2DModel`` that has no
``enable_cache``. Their hooks keep state in a ``StateManager`` that needs a cache context, which the
``CacheMixin.cache_context`` context manager sets (the transformers that have the mixin do exactly this). Between
generations :meth:`HookRegistry.reset_stateful_hooks` drops every cached tensor, and :meth:`HookRegistry.remove_hook`
takes the hooks out by name afterwards.

Silent no-ops are errors here: every method counts the modules it hooked and refuses to run with none.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_mag_cache,
    apply_taylorseer_cache,
)

import runtime
from runtime.diffusers_internals import (
    _ATTENTION_CLASSES,
    _FBC_BLOCK_HOOK,
    _FBC_LEADER_BLOCK_HOOK,
    _FEEDFORWARD_CLASSES,
    _MAG_CACHE_BLOCK_HOOK,
    _MAG_CACHE_LEADER_BLOCK_HOOK,
    _TAYLORSEER_CACHE_HOOK,
    CacheMixin,
)

from .config import BenchmarkConfig, MagCacheGrid, MethodsConfig
from .methods import Method, Settings

CACHE_CONTEXT = "inference"
"""Name of the cache context the hooks' state lives in (one batched pass per step: CFG halves share it)."""

_MAGCACHE_MARKER = "[MagCache] Calibration Complete"


def count_hooks(transformer: torch.nn.Module, names: Sequence[str]) -> int:
    """Number of modules in ``transformer`` that carry a diffusers hook registered under one of ``names``."""
    return sum(
        1
        for module in transformer.modules()
        if hasattr(module, "_diffusers_hook") and any(n in module._diffusers_hook.hooks for n in names)
    )


def remove_hooks(transformer: torch.nn.Module, names: Sequence[str]) -> None:
    """Removes the hooks called ``names`` everywhere in ``transformer`` and drops registries left empty.

    Raises:
        RuntimeError: If a hook survives the removal.
    """
    HookRegistry.check_if_exists_or_initialize(transformer)
    for name in names:
        transformer._diffusers_hook.remove_hook(name, recurse=True)
    left = count_hooks(transformer, names)
    if left:
        raise RuntimeError(f"{left} modules still carry hooks {list(names)} after HookRegistry.remove_hook.")
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and not registry.hooks:
            del module._diffusers_hook
    root = getattr(transformer, "_diffusers_hook", None)
    if root is not None:
        root.invalidate_child_registries_cache()


def taylorseer_identifiers(transformer: torch.nn.Module) -> list[str]:
    """``cache_identifiers`` matching the attention and feed-forward modules of every transformer block.

    diffusers' default pattern (``^transformer_blocks.*attn``) is matched with ``re.fullmatch`` and so misses
    ``attn1`` of ``BasicTransformerBlock`` (DiT, PixArt): it would hook nothing. These patterns are built from the
    model itself, one per (block list, child) pair, e.g. ``transformer_blocks\\.\\d+\\.attn1``.
    """
    patterns: dict[str, None] = {}
    for block in runtime.find_blocks(transformer):
        list_name = block.name.rsplit(".", 1)[0]
        for child_name, child in block.module.named_children():
            if isinstance(child, _ATTENTION_CLASSES + _FEEDFORWARD_CLASSES):
                patterns[rf"{re.escape(list_name)}\.\d+\.{re.escape(child_name)}"] = None
    return list(patterns)


class DiffusersCache(Method):
    """A cache from ``diffusers.hooks`` applied to the transformer; FLOPs are counted by the runner.

    Subclasses set :attr:`hook_names` and implement :meth:`apply`.
    """

    family = "diffusers"
    hook_names: tuple[str, ...] = ()

    def __init__(self, name: str, knob: str) -> None:
        self.name, self.knob = name, knob
        self.hooked = 0
        self._transformer: torch.nn.Module | None = None

    def apply(self, transformer: torch.nn.Module, settings: Settings) -> None:
        """Calls diffusers' ``apply_*`` function on ``transformer``."""
        raise NotImplementedError

    def attach(self, pipe: Any, settings: Settings) -> None:
        transformer = pipe.transformer
        self.apply(transformer, settings)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
        self.hooked = count_hooks(transformer, self.hook_names)
        self._transformer = transformer
        if self.hooked == 0:
            self.detach(pipe)
            raise RuntimeError(
                f"{self.name} ({self.knob}) hooked no module of {type(transformer).__name__}: it would silently "
                "run uncached. Check that the model's blocks are in a list diffusers recognises."
            )

    def detach(self, pipe: Any) -> None:
        remove_hooks(pipe.transformer, self.hook_names)
        self._transformer = None

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        transformer = self._transformer
        transformer._diffusers_hook.reset_stateful_hooks(recurse=True)  # drops cached tensors and the context
        # DiT and SD3 transformers lack CacheMixin; its context manager works on any hooked module.
        with CacheMixin.cache_context(transformer, CACHE_CONTEXT):
            yield

    def info(self) -> dict[str, Any]:
        """Extra row fields: how many modules were hooked."""
        return {"hooked_modules": self.hooked}


class DiffusersFirstBlockCache(DiffusersCache):
    """``FirstBlockCacheConfig(threshold)``: block 0 always runs; the rest reuse while its residual barely moves."""

    hook_names = (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)

    def __init__(self, threshold: float) -> None:
        super().__init__("diffusers FirstBlockCache", f"threshold={threshold:g}")
        self.threshold = threshold

    def apply(self, transformer: torch.nn.Module, settings: Settings) -> None:
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=self.threshold))


class DiffusersTaylorSeer(DiffusersCache):
    """``TaylorSeerCacheConfig`` on every block's attention and feed-forward modules.

    Args:
        interval: ``cache_interval``.
        order: ``max_order``.
        disable_cache_before_step: Steps computed in full first.
        factors_dtype: dtype of the stored Taylor factors.
    """

    hook_names = (_TAYLORSEER_CACHE_HOOK,)

    def __init__(self, interval: int, order: int, disable_cache_before_step: int, factors_dtype: str) -> None:
        super().__init__("diffusers TaylorSeer", f"N={interval}, O={order}")
        self.interval, self.order = interval, order
        self.disable_cache_before_step = disable_cache_before_step
        self.factors_dtype = getattr(torch, factors_dtype)
        self.identifiers: list[str] = []

    def apply(self, transformer: torch.nn.Module, settings: Settings) -> None:
        self.identifiers = taylorseer_identifiers(transformer)
        config = TaylorSeerCacheConfig(
            cache_interval=self.interval,
            max_order=self.order,
            disable_cache_before_step=self.disable_cache_before_step,
            taylor_factors_dtype=self.factors_dtype,
            cache_identifiers=self.identifiers,
        )
        apply_taylorseer_cache(transformer, config)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "cache_identifiers": self.identifiers}


class MagCacheCalibration:
    """MagCache's per-step magnitude ratios, measured once on one sample and shared by every threshold.

    As ``MagCacheConfig`` documents: run once with ``calibrate=True``, take the printed ratios, pass them as
    ``mag_ratios``.

    Args:
        grid: The MagCache section of the config (calibration seed and class).
        default_class: Class used when the grid names none.
    """

    def __init__(self, grid: MagCacheGrid, default_class: int) -> None:
        self.seed = grid.calibration_seed
        self.condition = grid.calibration_class if grid.calibration_class is not None else default_class
        self.ratios: list[float] | None = None
        self.steps: int | None = None

    def get(self, pipe: Any, settings: Settings) -> list[float]:
        """The ratios for ``settings.steps`` (calibrating on first use)."""
        if self.ratios is None or self.steps != settings.steps:
            self.ratios = calibrate_magcache(pipe, settings, self.seed, self.condition)
            self.steps = settings.steps
        return self.ratios


def calibrate_magcache(pipe: Any, settings: Settings, seed: int, condition: int) -> list[float]:
    """Runs one sample with ``MagCacheConfig(calibrate=True)`` and returns the magnitude ratios it reports.

    Raises:
        RuntimeError: If diffusers reported no ratios, or not one per step.
    """
    transformer = pipe.transformer
    names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
    apply_mag_cache(transformer, MagCacheConfig(calibrate=True, num_inference_steps=settings.steps))
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    if count_hooks(transformer, names) == 0:
        remove_hooks(transformer, names)
        raise RuntimeError(f"MagCache hooked no block of {type(transformer).__name__}; cannot calibrate.")
    one = Settings((condition,), (seed,), settings.steps, settings.guidance, settings.warmup_steps)
    printed = io.StringIO()
    try:
        with CacheMixin.cache_context(transformer, CACHE_CONTEXT), contextlib.redirect_stdout(printed):
            one.run(pipe)
    finally:
        remove_hooks(transformer, names)
    ratios = _parse_ratios(printed.getvalue())
    if ratios is None or len(ratios) != settings.steps:
        raise RuntimeError(
            f"MagCache calibration reported {'no' if ratios is None else len(ratios)} ratios for {settings.steps} "
            "steps; diffusers' calibration output may have changed format."
        )
    return ratios


def _parse_ratios(text: str) -> list[float] | None:
    """The list printed after diffusers' "Calibration Complete" line, or ``None``."""
    at = text.rfind(_MAGCACHE_MARKER)
    if at < 0:
        return None
    start = text.find("[", text.find("\n", at))
    end = text.find("]", start)
    if start < 0 or end < 0:
        return None
    try:
        return [float(v) for v in ast.literal_eval(text[start : end + 1])]
    except (ValueError, SyntaxError, TypeError):
        return None


class DiffusersMagCache(DiffusersCache):
    """``MagCacheConfig(threshold, max_skip_steps, retention_ratio, mag_ratios=calibrated)``.

    Args:
        threshold: Accumulated-error threshold.
        max_skip_steps: Most consecutive skipped steps (K).
        grid: The MagCache config section.
        calibration: Shared calibration.
    """

    hook_names = (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)

    def __init__(
        self, threshold: float, max_skip_steps: int, grid: MagCacheGrid, calibration: MagCacheCalibration
    ) -> None:
        super().__init__("diffusers MagCache", f"threshold={threshold:g}, K={max_skip_steps}")
        self.threshold = threshold
        self.max_skip_steps = max_skip_steps
        self.grid = grid
        self.calibration = calibration
        self.ratios: list[float] | None = None

    def prepare(self, pipe: Any, settings: Settings) -> None:
        self.ratios = self.calibration.get(pipe, settings)

    def apply(self, transformer: torch.nn.Module, settings: Settings) -> None:
        config = MagCacheConfig(
            threshold=self.threshold,
            max_skip_steps=self.max_skip_steps,
            retention_ratio=self.grid.retention_ratio,
            num_inference_steps=settings.steps,
            mag_ratios=torch.tensor(self.ratios),
        )
        apply_mag_cache(transformer, config)


def diffusers_methods(methods: MethodsConfig, config: BenchmarkConfig) -> list[Method]:
    """diffusers' caches over their grids (family ``"diffusers"``)."""
    out: list[Method] = [DiffusersFirstBlockCache(t) for t in methods.diffusers_first_block.thresholds]
    grid = methods.diffusers_taylorseer
    out += [
        DiffusersTaylorSeer(n, order, grid.disable_cache_before_step, grid.factors_dtype)
        for order in grid.orders
        for n in grid.intervals
    ]
    mag = methods.diffusers_magcache
    if mag.thresholds and mag.max_skip_steps:
        calibration = MagCacheCalibration(mag, default_class=config.conditions[0])
        out += [DiffusersMagCache(t, k, mag, calibration) for k in mag.max_skip_steps for t in mag.thresholds]
    return out

"""The front door: the cache engine with a policy object or the path of an exported policy file.

``runtime`` knows policies only as objects with an ``act`` method and imports nothing of this package; loading an
exported ``.safetensors`` file is this package's job. These functions load a path with :func:`load_policy` and then
hand everything to :func:`runtime.enable_cache` unchanged.

Example::

    import policies

    engine = policies.enable_cache(pipe, "assets/policies/mini-dit-digits.safetensors", budget=0.3)
    images = pipe([3, 1, 4], output_type="pt").images
    runtime.disable_cache(pipe)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import runtime
from runtime import CacheEngine, EngineOptions, PolicyLike

from .loading import load_policy


def as_policy(policy: PolicyLike | str | Path) -> PolicyLike:
    """``policy`` itself, or the policy an exported file holds (loaded with :func:`load_policy`).

    Raises:
        PolicyFormatError: If ``policy`` is the path of a missing or malformed file.
    """
    return load_policy(policy) if isinstance(policy, (str, Path)) else policy


def enable_cache(
    transformer: torch.nn.Module | Any,
    policy: PolicyLike | str | Path,
    options: EngineOptions | None = None,
    **keywords: Any,
) -> CacheEngine:
    """:func:`runtime.enable_cache`, also taking the path of an exported policy.

    Args:
        transformer: The pipeline (its transformer is hooked and its scheduler read, which policies that read the
            scheduler need), or the transformer to accelerate, e.g. ``pipe.transformer``.
        policy: A policy object, or the path of a file written by ``export_policy`` or ``export_schedule`` (the
            engine options it was trained with are the defaults of those not given).
        options: Engine options, as for :func:`runtime.enable_cache`.
        **keywords: The keyword options of :func:`runtime.enable_cache` (``groups``, ``budget``, ...).

    Returns:
        The engine; ``engine.summary()`` reports what was computed.

    Raises:
        PolicyFormatError: If ``policy`` is the path of a missing or malformed file.
    """
    return runtime.enable_cache(transformer, as_policy(policy), options, **keywords)


@contextlib.contextmanager
def cached(
    transformer: torch.nn.Module | Any,
    policy: PolicyLike | str | Path,
    options: EngineOptions | None = None,
    **keywords: Any,
) -> Iterator[CacheEngine]:
    """:func:`runtime.cached`, also taking the path of an exported policy: the engine for a ``with`` block.

    Example::

        with policies.cached(pipe, "policy.safetensors", budget=0.3) as engine:
            images = pipe([3, 1, 4], output_type="pt").images
        print(engine.summary()["flops_speedup"])

    Yields:
        The engine, removed from the transformer when the block ends.
    """
    with runtime.cached(transformer, as_policy(policy), options, **keywords) as engine:
        yield engine

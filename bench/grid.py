"""The grid of methods a benchmark run compares: every method of the config at every knob setting.

It sits above the method modules (:mod:`.methods`, :mod:`.replay`, :mod:`.diffusers_caches`), which import none of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from policies import FORA, AlwaysCompute, DeltaDiT, FirstBlockThreshold, TaylorSeer
from runtime import EngineOptions

from .config import BenchmarkConfig, MethodsConfig
from .diffusers_caches import diffusers_methods
from .methods import LEARNED_NAME, SHARED_NAME, EngineMethod, Method
from .replay import RecordedLearnedMethod, with_static_replays

SHARED_DECISIONS = EngineOptions(shared_decisions=True)
"""Options of the learned policy's shared rows: its own trained options, one decision per group for the batch."""


def _fmt(value: float) -> str:
    return f"{value:g}"


def engine_methods(methods: MethodsConfig, engine_options: EngineOptions) -> list[Method]:
    """The engine's hand-designed policies over their grids (family ``"baseline"``)."""
    out: list[Method] = []

    # Only FirstBlockCache's rule reads the probe; the others get every block to cache (probe_blocks=0), which is
    # their best setting at any speed (TeaCache's signal is the first block's input, known before any block runs).
    no_probe = engine_options.replace(probe_blocks=0)

    def add(name: str, knob: str, factory: Callable[[], Any], options: EngineOptions = no_probe) -> None:
        out.append(EngineMethod(name, "baseline", knob, factory, options))

    if methods.always_compute:
        add("AlwaysCompute", "-", AlwaysCompute)
    for n in methods.fora.intervals:
        add("FORA", f"N={n}", lambda n=n: FORA(n))
    for t in methods.first_block.thresholds:
        add(
            "FirstBlockCache",
            f"threshold={_fmt(t)}",
            lambda t=t: FirstBlockThreshold(t, signal="probe_change"),
            engine_options,
        )
    for t in methods.teacache.thresholds:
        add(
            "TeaCache-style",
            f"threshold={_fmt(t)}",
            lambda t=t: FirstBlockThreshold(t, signal="accumulated_input_change"),
        )
    grid = methods.taylorseer
    for order in grid.orders:
        for n in grid.intervals:
            add("TaylorSeer", f"N={n}, O={order}", lambda n=n, o=order: TaylorSeer(n, o, warmup=grid.warmup))
    grid_d = methods.delta_dit
    for span in grid_d.spans:
        for n in grid_d.intervals:
            add(
                "Δ-DiT",
                f"N={n}, span={_fmt(span)}",
                lambda n=n, s=span: DeltaDiT(n, boundary=grid_d.boundary, span=s),
            )
    return out


def learned_methods(
    policy: Any, budgets: Sequence[float], shared: bool = False, static_replay: bool = False
) -> list[Method]:
    """The exported learned policy (loaded with ``policies.load_policy``) at each budget (family ``"learned"``);
    engine options come from the policy.

    With ``shared``, the same budgets again with one decision per group for the whole batch. With
    ``static_replay``, the per-sample policy's decisions are recorded at each budget (its rows then carry
    ``disagreement``), and the majority schedule of them is played for every sample as one more method (see
    :mod:`.replay`).
    """
    if static_replay:
        recorded = [RecordedLearnedMethod(LEARNED_NAME, f"budget={_fmt(b)}", policy, b) for b in budgets]
        methods = with_static_replays(recorded)
    else:
        methods = [
            EngineMethod(LEARNED_NAME, "learned", f"budget={_fmt(b)}", lambda: policy, budget=b) for b in budgets
        ]
    if shared:
        methods += [
            EngineMethod(SHARED_NAME, "learned", f"budget={_fmt(b)}", lambda: policy, SHARED_DECISIONS, b)
            for b in budgets
        ]
    return methods


def build_methods(config: BenchmarkConfig, policy: Any | None) -> list[Method]:
    """Every method at every knob of ``config``: learned (with a ``policy``), engine baselines, diffusers caches."""
    methods: list[Method] = []
    if policy is not None and config.methods.learned.budgets:
        learned = config.methods.learned
        methods += learned_methods(policy, learned.budgets, learned.shared_decisions, learned.static_replay)
    methods += engine_methods(config.methods, config.engine_options)
    methods += diffusers_methods(config.methods, config)
    return methods

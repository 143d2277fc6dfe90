"""Observation features a policy names: the columns it asks for, in its order, with the values the table documents."""

from __future__ import annotations

import pytest
import torch

import runtime
from runtime import Action
from runtime.observations import ADAPTIVE_FEATURES, DEFAULT_FEATURES
from tests.runtime.toy_models import PolynomialTransformer, ScriptedPolicy

TIMES = [999.0, 870.0, 820.0, 610.0, 400.0]


class NamedFeatures(ScriptedPolicy):
    """A scripted policy that asks for ``feature_names`` and keeps the feature vectors it was given."""

    def __init__(self, names: tuple[str, ...], script) -> None:
        super().__init__(script)
        self.feature_names = names

    def table(self) -> list[dict[str, torch.Tensor]]:
        """Per step, each feature's column over the samples."""
        return [{n: o.features[:, i] for i, n in enumerate(o.names)} for o in self.observations]


def run(policy: NamedFeatures, coefficients: list[float], samples: int = 2) -> list[dict[str, torch.Tensor]]:
    model = PolynomialTransformer([c / 1000.0**i for i, c in enumerate(coefficients)], depth=2)
    x = torch.randn(samples, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runtime.enable_cache(model, policy, groups=1, probe_blocks=0, forecast_order=1)
    try:
        for t in TIMES:
            model(x, torch.full((samples,), t))
    finally:
        runtime.disable_cache(model)
    return policy.table()


def test_the_default_features_are_unchanged() -> None:
    assert runtime.feature_names(2) == runtime.feature_names(2, DEFAULT_FEATURES)
    assert runtime.feature_names(2) == (
        "time", "input_change", "probe_change", "compute_spent", "budget",
        "since_compute_0", "since_compute_1", "forecast_gap_0", "forecast_gap_1",
    )  # fmt: skip


def test_a_policy_gets_the_columns_it_names_in_its_order() -> None:
    names = ("budget", "forecast_error_0", "time")
    policy = NamedFeatures(names, lambda step, sample, group: Action.COMPUTE)
    table = run(policy, [0.5, -1.5])
    assert all(o.names == names and o.features.shape == (2, 3) for o in policy.observations)
    for step, row in enumerate(table):
        torch.testing.assert_close(row["time"], torch.full((2,), TIMES[step] / 1000.0))
        torch.testing.assert_close(row["budget"], torch.ones(2))


def test_step_size_time_since_compute_and_residual_change() -> None:
    names = runtime.feature_names(1, ADAPTIVE_FEATURES)
    policy = NamedFeatures(names, lambda step, sample, group: Action.COMPUTE if step <= 1 else Action.FORECAST)
    coefficients = [0.5, -1.5]
    table = run(policy, coefficients)
    sizes = [float(row["step_size"][0]) for row in table]
    assert sizes == pytest.approx([0.0] + [(a - b) / 1000.0 for a, b in zip(TIMES, TIMES[1:], strict=False)])
    since = [float(row["time_since_compute_0"][0]) for row in table]
    assert since == pytest.approx([0.0, (999 - 870) / 1000, (870 - 820) / 1000, (870 - 610) / 1000, 0.47])

    def value(t: float) -> float:  # the residual is value(t) times a fixed direction
        return coefficients[0] + coefficients[1] * t / 1000.0

    expected = abs(value(999.0) - value(870.0)) / abs(value(870.0))
    assert float(table[1]["residual_change_0"][0]) == 0.0  # one residual so far
    assert float(table[2]["residual_change_0"][0]) == pytest.approx(expected, rel=1e-6)
    assert float(table[4]["residual_change_0"][0]) == pytest.approx(expected, rel=1e-6)  # no compute since


@pytest.mark.parametrize(("coefficients", "exact"), [([0.5, -1.5], True), ([0.2, 0.4, -2.9], False)])
def test_forecast_error_is_what_the_skipped_forecast_would_have_missed(coefficients, exact) -> None:
    names = runtime.feature_names(1, ADAPTIVE_FEATURES)
    table = run(NamedFeatures(names, lambda step, sample, group: Action.COMPUTE), coefficients)
    errors = [float(row["forecast_error_0"][0]) for row in table]
    assert errors[:3] == [0.0, 0.0, 0.0]  # the third compute (step 2) is the first with a forecast to compare
    if exact:  # a residual linear in time: the first-order forecast misses nothing
        assert max(errors) < 1e-9
    else:
        assert min(errors[3:]) > 1e-3


def test_features_the_engine_cannot_build_are_refused_by_name() -> None:
    model = PolynomialTransformer([0.5], depth=2)
    unknown = NamedFeatures(("time", "noise_level"), lambda step, sample, group: Action.COMPUTE)
    with pytest.raises(ValueError, match="trained on observation features .*'noise_level' is no observation feature"):
        runtime.enable_cache(model, unknown, groups=1, probe_blocks=0)
    other_groups = NamedFeatures(("time", "since_compute_3"), lambda step, sample, group: Action.COMPUTE)
    with pytest.raises(ValueError, match="names group 3, but the engine has 1 groups"):
        runtime.enable_cache(model, other_groups, groups=1, probe_blocks=0)
    assert runtime.get_engine(model) is None


class _Pipeline:
    """What ``enable_cache`` reads of a pipeline: its ``transformer`` and its current ``scheduler``."""

    def __init__(self, transformer: torch.nn.Module, scheduler) -> None:
        self.transformer, self.scheduler = transformer, scheduler


def test_solver_order_is_read_from_the_pipelines_scheduler_at_every_generation() -> None:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    model = PolynomialTransformer([0.5], depth=2)
    policy = NamedFeatures(("time", "solver_order"), lambda step, sample, group: Action.COMPUTE)
    with pytest.raises(ValueError, match=r"reads the pipeline's scheduler .* pass the pipeline"):
        runtime.enable_cache(model, policy, groups=1, probe_blocks=0)
    assert runtime.get_engine(model) is None
    pipe = _Pipeline(model, DDIMScheduler())
    runtime.enable_cache(pipe, policy, groups=1, probe_blocks=0)
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    try:
        assert runtime.get_engine(pipe) is runtime.get_engine(model)
        for scheduler in (
            DDIMScheduler(),
            DPMSolverMultistepScheduler(solver_order=2),
            DPMSolverMultistepScheduler(solver_order=3),
        ):
            pipe.scheduler = scheduler  # swapped between generations, as SchedulerSwitch and users do
            for t in TIMES[:2]:
                model(x, torch.full((2,), t))
    finally:
        runtime.disable_cache(pipe)
    orders = [float(row["solver_order"][0]) for row in policy.table()]
    assert orders == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    assert runtime.get_engine(model) is None

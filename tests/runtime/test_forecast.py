"""FORECAST is the polynomial through the last computed residuals, in the (unevenly spaced) time variable."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime
from runtime import Action
from runtime.forecast import ResidualHistory, lagrange_weights
from tests.runtime.toy_models import PolynomialTransformer, ScriptedPolicy

times_strategy = st.lists(
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False), min_size=5, max_size=5, unique=True
)


@settings(max_examples=60, deadline=None)
@given(
    order=st.integers(min_value=1, max_value=3),
    times=times_strategy,
    coefficients=st.lists(st.floats(min_value=-2.0, max_value=2.0), min_size=4, max_size=4),
)
def test_order_k_is_exact_on_degree_k_polynomials(order: int, times: list[float], coefficients: list[float]) -> None:
    points = sorted(times, reverse=True)
    known, target = points[: order + 1], points[order + 1]
    if min(abs(a - b) for i, a in enumerate(known) for b in known[i + 1 :]) < 1.0:
        return  # nearly coincident points make any polynomial fit ill-conditioned, in any implementation

    def poly(t: float) -> float:
        return sum(c * (t / 1000.0) ** i for i, c in enumerate(coefficients[: order + 1]))

    history = ResidualHistory(depth=order + 1, batch=1)
    for t in reversed(known):  # oldest first, as steps happen
        history.push(torch.tensor([0]), (torch.tensor([[poly(t)]], dtype=torch.float64),), t)
    forecast = history.forecast(torch.tensor([0]), target, order)[0].item()
    assert abs(forecast - poly(target)) <= 1e-6 * max(1.0, abs(poly(target)))


@settings(max_examples=30, deadline=None)
@given(times=times_strategy, order=st.integers(min_value=1, max_value=3))
def test_weights_reproduce_constants_and_ignore_missing_points(times: list[float], order: int) -> None:
    newest = sorted(times, reverse=True)[:4]
    if min(a - b for a, b in zip(newest, newest[1:], strict=False)) < 1.0:
        return  # nearly coincident points: ill-conditioned for any polynomial fit
    stored = torch.tensor(newest, dtype=torch.float64)[:, None].repeat(1, 3)
    counts = torch.tensor([1, 2, 4])
    weights = lagrange_weights(stored, counts, time=-5.0, order=order)
    assert torch.allclose(weights.sum(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.equal(weights[1:, 0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(weights[2:, 1], torch.zeros(2, dtype=torch.float64))


@given(order=st.integers(min_value=1, max_value=3))
@settings(max_examples=6, deadline=None)
def test_reuse_and_forecast_never_mutate_the_cache(order: int) -> None:
    history = ResidualHistory(depth=order + 1, batch=2)
    for step, t in enumerate([900.0, 700.0, 650.0, 300.0]):
        history.push(torch.tensor([0, 1]), (torch.full((2, 3), float(step)),), t)
    stored = [slot[0] for slot in history.slots]
    before = [tensor.clone() for tensor in stored]
    reused = history.latest(torch.tensor([0, 1]))[0]
    forecast = history.forecast(torch.tensor([0, 1]), 100.0, order)[0]
    reused.add_(100.0)
    forecast.mul_(-3.0)
    history.push(torch.tensor([1]), (torch.full((1, 3), 9.0),), 50.0)  # a partial push builds new slots
    assert all(torch.equal(tensor, copy) for tensor, copy in zip(stored, before, strict=True))
    assert history.slots[0][0][1].tolist() == [9.0, 9.0, 9.0]


def test_slot_bounds_cover_every_row_and_flag_what_may_overflow() -> None:
    history = ResidualHistory(depth=2, batch=3)
    everyone = torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="must compute before it can be reused"):
        history.latest_finite(everyone)
    history.push(everyone, (torch.randn(3, 4) * 5, torch.randn(3, 2)), 900.0)
    history.push(torch.tensor([1]), (torch.full((1, 4), -300.0), torch.zeros(1, 2)), 700.0)  # per-row slots
    history.push(torch.tensor([0, 2]), (torch.randn(2, 4), torch.randn(2, 2)), 600.0)
    for k, slot in enumerate(history.slots):
        assert all(history.slot_bound(k) >= stream.abs().max().item() for stream in slot)
    assert history.forecast_within_range([1.5, -0.5], torch.float32)
    assert not history.forecast_within_range([1.5, -0.5], torch.float16)  # 300 is past 2**-8 of float16's range
    history.push(everyone, (torch.tensor([[float("inf")] * 4] * 3), torch.zeros(3, 2)), 500.0)
    assert not history.forecast_within_range([1.0, 0.0], torch.float32)
    assert history.latest_finite(everyone) is not None  # a reuse of it falls back to computing


def test_engine_forecast_is_exact_through_a_model() -> None:
    """Computes ``order + 1`` unevenly spaced steps, then forecasts: equal to running the blocks."""
    times = [999.0, 870.0, 820.0, 610.0, 400.0, 377.0, 120.0]
    for order, coefficients in [(1, [0.5, -1.5]), (2, [0.2, 0.4, -0.9]), (3, [1.0, -0.3, 0.8, 0.5])]:
        scaled = [c / 1000.0**i for i, c in enumerate(coefficients)]
        model = PolynomialTransformer(scaled, depth=3)
        x = torch.randn(2, 4, 8, dtype=torch.float64)
        expected = torch.stack([model(x, torch.full((2,), t)) for t in times])
        policy = ScriptedPolicy(lambda step, sample, group, k=order: Action.COMPUTE if step <= k else Action.FORECAST)
        engine = runtime.enable_cache(model, policy, groups=1, probe_blocks=0, forecast_order=order)
        got = torch.stack([model(x, torch.full((2,), t)) for t in times])
        assert engine.summary()["forecasts"] == 2 * (len(times) - order - 1)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        runtime.disable_cache(model)


def test_shared_time_fast_path_matches_per_row_weights() -> None:
    """Whole-batch pushes take plain-float weights; row-by-row pushes of the same data take per-row weights."""
    torch.manual_seed(0)
    steps = [(900.0, torch.randn(2, 5)), (760.0, torch.randn(2, 5)), (700.0, torch.randn(2, 5))]
    whole, by_row = ResidualHistory(depth=3, batch=2), ResidualHistory(depth=3, batch=2)
    for time, value in steps:
        whole.push(torch.tensor([0, 1]), (value,), time)
        for row in (0, 1):
            by_row.push(torch.tensor([row]), (value[row : row + 1],), time)
    rows = torch.tensor([0, 1])
    assert isinstance(whole.forecast_weights(rows, 500.0, 2), list)
    assert isinstance(by_row.forecast_weights(rows, 500.0, 2), torch.Tensor)
    for order in (1, 2):
        assert torch.allclose(whole.forecast(rows, 500.0, order)[0], by_row.forecast(rows, 500.0, order)[0])
    newest, previous = steps[2][1], steps[1][1]
    expected = (newest - previous).abs().mean(1) / newest.abs().mean(1)
    assert torch.allclose(whole.last_change, expected.double())
    assert torch.allclose(by_row.last_change, expected.double())

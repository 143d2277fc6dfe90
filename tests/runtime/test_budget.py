"""The one budget rule: a compute fraction in (0, 1]."""

from __future__ import annotations

import math

import pytest

from envs.config import ConfigError
from runtime.budget import check_budget, check_budgets, is_budget


@pytest.mark.parametrize("value", [0.01, 0.25, 1, 1.0])
def test_fractions_in_the_half_open_unit_interval_are_budgets(value: float) -> None:
    assert is_budget(value)
    assert check_budget(value) == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, math.nan, True, "0.5", None])
def test_anything_else_is_refused_with_the_callers_name(value: object) -> None:
    assert not is_budget(value)
    with pytest.raises(ConfigError, match=r"eval\.budgets.*compute fraction in \(0, 1\]"):
        check_budget(value, "eval.budgets", ConfigError)


def test_a_list_names_its_bad_entry_and_refuses_to_be_empty() -> None:
    assert check_budgets([0.5, 1]) == [0.5, 1.0]
    with pytest.raises(ValueError, match=r"1\.5 is not a compute fraction"):
        check_budgets([0.25, 1.5])
    with pytest.raises(ValueError, match="at least one"):
        check_budgets([])

"""The compute budget: the fraction of a generation's block FLOPs that a cache may spend (the speed knob).

Every place that takes a budget (engine, configs, command lines, benchmark grids) checks it here, so the rule and
its message exist once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def is_budget(value: Any) -> bool:
    """Whether ``value`` is a compute fraction in (0, 1]: a real number (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not math.isnan(value) and 0.0 < float(value) <= 1.0


def check_budget(value: Any, name: str = "budget", error: type[Exception] = ValueError) -> float:
    """Returns ``value`` as a float, or raises ``error`` naming ``name`` if it is not a compute fraction in (0, 1].

    Args:
        value: The budget to check.
        name: What the caller calls it (a config field or a flag), named in the message.
        error: The exception type to raise (a ``ValueError`` subclass such as ``ConfigError``).

    Raises:
        ValueError: Or ``error``, if ``value`` is not a number in (0, 1].
    """
    if not is_budget(value):
        raise error(f"{name}={value!r}: a budget is a compute fraction in (0, 1], e.g. 0.25 for 4x fewer FLOPs.")
    return float(value)


def check_budgets(values: Iterable[Any], name: str = "budgets", error: type[Exception] = ValueError) -> list[float]:
    """Checks a non-empty list of budgets with :func:`check_budget`; the message names the bad entry.

    Raises:
        ValueError: Or ``error``, if the list is empty or an entry is not a number in (0, 1].
    """
    values = list(values)
    if not values:
        raise error(f"{name}: give at least one compute fraction in (0, 1], e.g. [0.25, 0.5].")
    bad = [value for value in values if not is_budget(value)]
    if bad:
        raise error(f"{name}={values!r}: {bad[0]!r} is not a compute fraction in (0, 1], e.g. 0.25 for 4x.")
    return [float(value) for value in values]

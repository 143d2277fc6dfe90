"""The reward of a cache-schedule episode: its terms (:data:`REWARD_TERMS`) and the code that computes them.

:data:`REWARD_TERMS` is the one written statement of the reward; :func:`rewards_markdown` renders it (with the
default coefficients of :class:`envs.config.RewardConfig`) into the documentation, and :func:`step_rewards` and
:func:`final_rewards` compute exactly those terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import RewardConfig


@dataclass(frozen=True)
class RewardTerm:
    """One additive term of the reward.

    Attributes:
        when: When it is paid: ``"every step"``, ``"last step"`` or ``"last step, with a budget"``.
        formula: The term, in the names of :class:`envs.config.RewardConfig`'s fields.
        meaning: What its symbols are.
    """

    when: str
    formula: str
    meaning: str


REWARD_TERMS: tuple[RewardTerm, ...] = (
    RewardTerm(
        "every step",
        "-compute_cost * c_t / S",
        "`c_t`: the fraction of an uncached step's transformer FLOPs the step computed (over all its passes); `S`: "
        "the episode's step count",
    ),
    RewardTerm(
        "every step",
        "Φ(x_t) - Φ(x_{t-1}), Φ(x) = -shaping * rmse(x, x_ref), Φ(x_{-1}) = 0",
        "potential-based shaping on the deviation of the step's latents `x_t` from the uncached trajectory `x_ref` "
        "of the same condition and seed",
    ),
    RewardTerm(
        "last step",
        "-ssim_weight * (1 - SSIM)",
        "SSIM of the final image against the uncached image",
    ),
    RewardTerm(
        "last step",
        "-psnr_weight * (psnr_cap - min(PSNR, psnr_cap)) / psnr_cap",
        "PSNR (dB) of the final image against the uncached image",
    ),
    RewardTerm(
        "last step, with a budget",
        "-overspend_penalty * max(0, fraction - budget)",
        "`fraction`: the episode's mean `c_t`; `budget`: the episode's target compute fraction",
    ),
)
"""The reward, term by term: the reward of a step adds the terms paid at it."""

REWARD_TERMS_NOTE = (
    "An always-compute episode pays no quality term and exactly `-compute_cost` of compute cost. With "
    "`env.group_rollouts > 1` the vector environment pays each reward relative to the mean of its group of "
    "rollouts of the same draw (a group-relative advantage)."
)
"""What the terms add up to, and the group-relative rewards of :class:`envs.CacheScheduleVecEnv`."""


def rmse(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square difference, float64."""
    return (x.double() - reference.double()).pow(2).flatten(1).mean(1).sqrt()


def step_rewards(
    config: RewardConfig,
    step_cost: np.ndarray,
    steps: int,
    latents: torch.Tensor,
    reference_latents: torch.Tensor,
    previous_potential: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The every-step terms of :data:`REWARD_TERMS`, per sample.

    Args:
        config: The reward coefficients.
        step_cost: ``(N,)`` ``c_t``, the fraction of an uncached step's FLOPs each sample computed at the step.
        steps: The episode's step count ``S``.
        latents: ``(N, ...)`` the latents after the step.
        reference_latents: ``(N, ...)`` the uncached latents after the same step.
        previous_potential: ``(N,)`` the potential after the previous step (zeros before the first).

    Returns:
        The rewards and the potential after this step (the next call's ``previous_potential``).
    """
    potential = -config.shaping * rmse(latents, reference_latents).numpy()
    rewards = -config.compute_cost * step_cost / steps
    return rewards + potential - previous_potential, potential


def final_rewards(
    config: RewardConfig,
    ssim_values: torch.Tensor,
    capped_psnr_values: torch.Tensor,
    fraction: np.ndarray,
    budgets: Sequence[float] | None,
) -> np.ndarray:
    """The last-step terms of :data:`REWARD_TERMS`, per sample.

    Args:
        config: The reward coefficients.
        ssim_values: ``(N,)`` float64 SSIM of the final images against the uncached ones.
        capped_psnr_values: ``(N,)`` float64 ``min(PSNR, psnr_cap)`` of the same.
        fraction: ``(N,)`` the episodes' compute fractions.
        budgets: The episodes' budgets, or ``None`` when the episodes are not budget-conditioned.
    """
    terminal = -config.ssim_weight * (1 - ssim_values)
    terminal = terminal - config.psnr_weight * (config.psnr_cap - capped_psnr_values) / config.psnr_cap
    terminal = terminal.numpy()
    if budgets is not None:
        overspend = np.maximum(0.0, fraction - np.asarray(budgets))
        terminal = terminal - config.overspend_penalty * overspend
    return terminal


def rewards_markdown() -> str:
    """:data:`REWARD_TERMS` as a Markdown table, then the default coefficients."""
    lines = ["| paid | term | where |", "|---|---|---|"]
    lines += [f"| {term.when} | `{term.formula}` | {term.meaning} |" for term in REWARD_TERMS]
    defaults = RewardConfig()
    coefficients = ", ".join(
        f"`{f.name}` = {getattr(defaults, f.name)}"
        for f in fields(RewardConfig)
        if isinstance(getattr(defaults, f.name), float)
    )
    lines += ["", f"Default coefficients (`reward.*` in the config, `envs.config.RewardConfig`): {coefficients}."]
    lines += ["", REWARD_TERMS_NOTE]
    return "\n".join(lines)

"""Warm start: behaviour-clone searched schedules into the actor (and their returns into the critic) before PPO.

PPO alone explores a 3^groups action space for 50 steps from scratch and settles on schedules a good static one beats.
So training first searches schedules on training samples (:mod:`reporting.schedule_search`) — one per budget shared by
all samples, or one per sample and budget (a privileged teacher) —, plays each in the training environment (same
observations, normalisation and rewards as PPO sees), and fits the policy network to those actions and returns.
With a per-sample teacher, DAgger rounds then run the policy itself and label the states it visits with its
teacher's actions, so that it learns to act from the states its own decisions lead to. PPO then refines the policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

import runtime
from envs.episodes import EpisodeBatch
from envs.sampling import SamplingSetting


@dataclass
class Demonstrations:
    """Teacher episodes as flat rows (one per sample and step).

    Attributes:
        observations: ``(rows, F)`` raw (unnormalised) observations.
        actions: ``(rows, groups)`` the actions the engine executed (impossible ones already mapped).
        masks: ``(rows, groups * 3)`` action masks.
        returns: ``(rows,)`` reward-to-go (undiscounted, as the agent's ``gamma=1``).
        psnr: Mean final PSNR per budget.
        compute_fraction: Mean compute fraction per budget.
    """

    observations: np.ndarray
    actions: np.ndarray
    masks: np.ndarray
    returns: np.ndarray
    psnr: dict[float, float]
    compute_fraction: dict[float, float]


Actor = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Maps raw observations ``(samples, F)`` and masks ``(samples, groups * 3)`` to ``(samples, groups)`` actions."""


def record_demonstrations(
    episodes: EpisodeBatch,
    schedules: Mapping[float, np.ndarray],
    conditions: Sequence[int | str],
    seeds: Sequence[int],
    budget_conditioned: bool = True,
    actor: Actor | None = None,
    setting: SamplingSetting | None = None,
) -> Demonstrations:
    """Plays each budget's schedule in the environment on ``(conditions, seeds)`` and records what it saw.

    Args:
        episodes: The training environment's episode batch.
        schedules: ``budget -> (steps, groups)`` actions for every sample, or ``(samples, steps, groups)``, one
            table per sample.
        conditions: One condition (class label or prompt) per episode.
        seeds: One seed per episode.
        budget_conditioned: Whether the episodes are given the budget (as the environment's own episodes are).
        actor: When given, its actions are executed and the schedule's actions only recorded as labels (DAgger:
            the states are the actor's, the labels the teacher's).
        setting: Scheduler and step count to play them at (default: the environment's); the schedules must have
            one row per step.
    """
    rows: dict[str, list[np.ndarray]] = {"observations": [], "actions": [], "masks": [], "returns": []}
    psnr: dict[float, float] = {}
    fraction: dict[float, float] = {}
    groups = episodes.engine.num_groups
    n = len(seeds)
    for budget, schedule in schedules.items():
        tables = np.broadcast_to(schedule, (n, *np.shape(schedule)[-2:])) if np.ndim(schedule) == 2 else schedule
        if len(tables) != n:
            raise ValueError(f"{len(tables)} per-sample schedules for {n} samples at budget {budget}.")
        observation = episodes.begin(conditions, seeds, [budget] * n if budget_conditioned else None, setting)
        observations, actions, masks, rewards = [], [], [], []
        for step in range(tables.shape[1]):
            mask = episodes.action_masks()
            per_group_mask = torch.as_tensor(mask).reshape(n, groups, -1)
            wanted = runtime.safe_actions(torch.as_tensor(np.ascontiguousarray(tables[:, step])), per_group_mask)
            executed = wanted if actor is None else torch.as_tensor(actor(observation, mask), dtype=torch.int64)
            observations.append(observation)
            actions.append(wanted.numpy())
            masks.append(mask)
            result = episodes.step(executed.numpy())
            rewards.append(result.rewards)
            observation = result.observations
            if result.done:
                psnr[budget] = float(np.mean([info["psnr"] for info in result.infos]))
                fraction[budget] = float(np.mean([info["compute_fraction"] for info in result.infos]))
                break
        returns = np.flip(np.cumsum(np.flip(np.stack(rewards), axis=0), axis=0), axis=0)
        # (steps, samples, ...) -> rows ordered sample by sample.
        rows["observations"].append(np.stack(observations).swapaxes(0, 1).reshape(-1, observation.shape[-1]))
        rows["actions"].append(np.stack(actions).swapaxes(0, 1).reshape(-1, groups))
        rows["masks"].append(np.stack(masks).swapaxes(0, 1).reshape(-1, masks[0].shape[-1]))
        rows["returns"].append(returns.swapaxes(0, 1).reshape(-1))
    episodes.abort()
    return Demonstrations(
        **{key: np.concatenate(value).astype(np.float32) for key, value in rows.items()},
        psnr=psnr,
        compute_fraction=fraction,
    )


def merge_demonstrations(parts: Sequence[Demonstrations]) -> Demonstrations:
    """All rows of ``parts`` together (the aggregated dataset of DAgger); ``psnr`` and fractions of the last."""
    fields = ("observations", "actions", "masks", "returns")
    merged = {key: np.concatenate([getattr(part, key) for part in parts]) for key in fields}
    return Demonstrations(**merged, psnr=parts[-1].psnr, compute_fraction=parts[-1].compute_fraction)


def model_actor(model: Any) -> Actor:
    """The deterministic actions of an SB3 (Maskable)PPO model, on raw observations (normalised as PPO does)."""
    normalizer = model.get_vec_normalize_env()
    maskable = isinstance(model.policy, MaskableActorCriticPolicy)

    def act(observations: np.ndarray, masks: np.ndarray) -> np.ndarray:
        scaled = normalizer.normalize_obs(observations) if normalizer is not None else observations
        extra = {"action_masks": masks} if maskable else {}
        actions, _ = model.predict(scaled, deterministic=True, **extra)
        return np.asarray(actions, dtype=np.int64)

    return act


def behaviour_clone(
    model: Any,
    demonstrations: Demonstrations,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    value_weight: float = 0.5,
    seed: int = 0,
    update_normalization: bool = True,
    label_smoothing: float = 0.0,
) -> dict[str, float]:
    """Fits an SB3 (Maskable)PPO policy to the demonstrations: cross-entropy on actions, MSE on returns.

    Observations go through the model's ``VecNormalize`` (its statistics are first updated with them, unless
    ``update_normalization`` is false), exactly as PPO will feed them.

    With ``label_smoothing`` ε the target of each group's decision puts ``1 - ε`` on the teacher's action and
    spreads ε evenly over the possible actions, so the cloned policy keeps trying the others with a small
    probability: what PPO then explores (its deterministic action stays the teacher's).

    Returns:
        ``accuracy`` (share of group decisions matching the teacher), ``loss_actor`` and ``loss_value`` of the
        last epoch.
    """
    normalizer = model.get_vec_normalize_env()
    raw = demonstrations.observations
    if normalizer is not None:
        if update_normalization:
            normalizer.obs_rms.update(raw)
        raw = normalizer.normalize_obs(raw)
    policy = model.policy
    observations = torch.as_tensor(raw, dtype=torch.float32)
    actions = torch.as_tensor(demonstrations.actions, dtype=torch.int64)
    masks = torch.as_tensor(demonstrations.masks, dtype=torch.bool)
    returns = torch.as_tensor(demonstrations.returns, dtype=torch.float32)
    maskable = isinstance(policy, MaskableActorCriticPolicy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    actor_loss = value_loss = torch.tensor(0.0)
    for _ in range(epochs):
        order = torch.randperm(len(actions), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            extra = {"action_masks": masks[index]} if maskable else {}
            values, log_prob, _ = policy.evaluate_actions(observations[index], actions[index], **extra)
            actor_loss = -log_prob.mean()
            if label_smoothing > 0:
                spread = _mean_log_prob_of_possible_actions(policy, observations[index], masks[index], maskable)
                actor_loss = (1 - label_smoothing) * actor_loss - label_smoothing * spread.mean()
            value_loss = torch.nn.functional.mse_loss(values.flatten(), returns[index])
            optimizer.zero_grad()
            (actor_loss + value_weight * value_loss).backward()
            optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        if maskable:
            distribution = policy.get_distribution(observations, action_masks=masks)
            categoricals = distribution.distributions
        else:
            categoricals = policy.get_distribution(observations).distribution
        predicted = torch.stack([c.probs.argmax(dim=-1) for c in categoricals], dim=-1)
    accuracy = float((predicted == actions).float().mean())
    return {"accuracy": accuracy, "loss_actor": float(actor_loss.detach()), "loss_value": float(value_loss.detach())}


def _mean_log_prob_of_possible_actions(
    policy: Any, observations: torch.Tensor, masks: torch.Tensor, maskable: bool
) -> torch.Tensor:
    """Per row, the sum over groups of the mean log-probability of the group's possible actions."""
    if maskable:
        categoricals = policy.get_distribution(observations, action_masks=masks).distributions
    else:
        categoricals = policy.get_distribution(observations).distribution
    total = torch.zeros(len(observations))
    for group, categorical in enumerate(categoricals):
        possible = masks.view(len(observations), len(categoricals), -1)[:, group]
        log_probs = torch.where(possible, categorical.logits, torch.zeros_like(categorical.logits))
        total = total + log_probs.sum(dim=1) / possible.sum(dim=1).clamp_min(1)
    return total

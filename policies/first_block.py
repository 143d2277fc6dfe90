"""First-block / TeaCache-style threshold: reuse every group while a cheap change signal stays small."""

from __future__ import annotations

import torch

from runtime import Action, Observation

from .base import Policy

SIGNALS = ("probe_change", "accumulated_input_change", "input_change")


class FirstBlockThreshold(Policy):
    """All groups reuse their residual while the change signal is at most ``threshold``; otherwise all compute.

    With ``signal="probe_change"`` this is FirstBlockCache (ParaAttention, ``diffusers.FirstBlockCacheConfig``):
    the relative L1 change of the probe blocks' residual since the last computed step. With
    ``signal="accumulated_input_change"`` it is TeaCache's rule: step-to-step relative L1 changes of the first
    block's input, summed since the last computed step (without TeaCache's per-model rescaling polynomial).
    The probe blocks always compute.

    Args:
        threshold: Largest change that still reuses.
        signal: Which statistic to threshold (see above).
        max_skips: If set, compute after this many consecutive reuses whatever the signal (as DBCache).
    """

    def __init__(self, threshold: float = 0.1, signal: str = "probe_change", max_skips: int | None = None) -> None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
            raise ValueError(f"threshold={threshold!r}: give a number >= 0.")
        if signal not in SIGNALS:
            raise ValueError(f"signal={signal!r}: use one of {list(SIGNALS)}.")
        if max_skips is not None and (not isinstance(max_skips, int) or max_skips < 1):
            raise ValueError(f"max_skips={max_skips!r}: give a whole number >= 1, or None.")
        self.threshold = float(threshold)
        self.signal = signal
        self.required_signals = (signal,)
        self.max_skips = max_skips

    def act(self, observation: Observation) -> torch.Tensor:
        change = observation.signals[self.signal]
        compute = (change > self.threshold)[:, None].expand(-1, observation.num_groups)
        if self.max_skips is not None:
            compute = compute | (observation.signals["since_compute"] > self.max_skips)
        return torch.where(compute, int(Action.COMPUTE), int(Action.REUSE)).to(torch.int64)

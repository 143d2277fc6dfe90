"""Residual history of a block group and its Taylor (polynomial) extrapolation in the diffusion time variable.

TaylorSeer forecasts a feature from finite differences over the last fully computed steps. The same forecast,
written for uneven step spacing, is the polynomial through the last ``order + 1`` computed residuals evaluated at
the current time: divided differences in the time variable (timestep or sigma), here in Lagrange form, so each
row of the batch may have its own history and its own order.
"""

from __future__ import annotations

import torch


def lagrange_weights(times: torch.Tensor, counts: torch.Tensor, time: float, order: int) -> torch.Tensor:
    """Weights of the polynomial extrapolation through each row's most recent points.

    Args:
        times: ``(K, R)`` times of the stored points, newest first.
        counts: ``(R,)`` how many of the ``K`` points are valid in each row.
        time: The time to extrapolate to.
        order: The wanted polynomial degree; each row uses ``min(order, count - 1)``.

    Returns:
        ``(K, R)`` float64 weights: the forecast of row ``r`` is ``sum_k weights[k, r] * value[k, r]``. Rows with
        one point get weight 1 on it (a plain reuse); points beyond a row's degree get weight 0.
    """
    times = times.to(torch.float64)
    depth = times.shape[0]
    used = torch.clamp(torch.minimum(counts.to(torch.int64), torch.tensor(order + 1)), min=1)
    weights = torch.zeros_like(times)
    for i in range(depth):
        weight = torch.ones_like(times[0])
        for j in range(depth):
            if j == i:
                continue
            active = j < used
            denominator = torch.where(active, times[i] - times[j], torch.ones_like(times[i]))
            weight = weight * torch.where(active, (time - times[j]) / denominator, torch.ones_like(weight))
        weights[i] = torch.where(i < used, weight, torch.zeros_like(weight))
    return weights


class ResidualHistory:
    """The newest computed residuals of one block group, per batch row, with the times they were computed at.

    A residual is a tuple of stream tensors (hidden states, and encoder hidden states for dual-stream blocks),
    each ``(batch, ...)``. Buffers are allocated on first use and updated only by :meth:`push`; the tensors
    :meth:`latest` and :meth:`forecast` return are new, so callers can never change what is cached.

    Args:
        depth: How many computed steps to keep (forecast order + 1).
        batch: Rows in the batch.

    Attributes:
        last_change: ``(batch,)`` relative L1 change between the two newest residuals of the hidden stream.
    """

    def __init__(self, depth: int, batch: int) -> None:
        self.depth = depth
        self.batch = batch
        self.values: list[torch.Tensor | None] | None = None
        self.times = torch.zeros(depth, batch, dtype=torch.float64)
        self.counts = torch.zeros(batch, dtype=torch.int64)
        self.last_change = torch.zeros(batch, dtype=torch.float64)

    def push(self, rows: torch.Tensor, residual: tuple[torch.Tensor | None, ...], time: float) -> None:
        """Stores a newly computed residual for ``rows`` (an index tensor into the batch)."""
        if self.values is None:
            self.values = [
                None if r is None else r.new_zeros((self.depth, self.batch, *r.shape[1:])) for r in residual
            ]
        first = self.values[0]
        if first is not None and self.depth > 1:
            previous = first[0, rows].flatten(1)
            current = residual[0].to(first.dtype).flatten(1)
            change = (current - previous).abs().mean(1) / current.abs().mean(1).clamp_min(1e-12)
            self.last_change[rows] = torch.where(
                self.counts[rows] >= 1, change.double(), torch.zeros_like(change.double())
            )
        for buffer, value in zip(self.values, residual, strict=True):
            if buffer is None or value is None:
                continue
            if buffer.shape[2:] != value.shape[1:]:
                raise ValueError(
                    f"A block group's residual changed shape from {tuple(buffer.shape[2:])} to "
                    f"{tuple(value.shape[1:])} within one generation: the group spans blocks whose hidden-state "
                    "layouts differ (e.g. dual- and single-stream blocks); use more groups so none spans both."
                )
            if self.depth > 1:
                buffer[1:, rows] = buffer[:-1, rows]
            buffer[0, rows] = value.to(buffer.dtype)
        if self.depth > 1:
            self.times[1:, rows] = self.times[:-1, rows]
        self.times[0, rows] = float(time)
        self.counts[rows] = torch.clamp(self.counts[rows] + 1, max=self.depth)

    def latest(self, rows: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The most recent residual of ``rows``."""
        return tuple(None if b is None else b[0, rows] for b in self._buffers())

    def forecast(self, rows: torch.Tensor, time: float, order: int) -> tuple[torch.Tensor | None, ...]:
        """The polynomial extrapolation of ``rows``' residual to ``time``."""
        weights = lagrange_weights(self.times[:, rows], self.counts[rows], time, order)
        result = []
        for buffer in self._buffers():
            if buffer is None:
                result.append(None)
                continue
            values = buffer[:, rows]
            w = weights.to(values.dtype).reshape(*weights.shape, *([1] * (values.ndim - 2)))
            result.append((w * values).sum(dim=0))
        return tuple(result)

    def _buffers(self) -> list[torch.Tensor | None]:
        if self.values is None:
            raise RuntimeError("ResidualHistory is empty: a group must compute before it can be reused.")
        return self.values

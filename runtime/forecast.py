"""Residual history of a block group and its Taylor (polynomial) extrapolation in the diffusion time variable.

TaylorSeer forecasts a feature from finite differences over the last fully computed steps. The same forecast,
written for uneven step spacing, is the polynomial through the last ``order + 1`` computed residuals evaluated at
the current time: divided differences in the time variable (timestep or sigma), here in Lagrange form, so each
row of the batch may have its own history and its own order.
"""

from __future__ import annotations

import math

import torch

from .devices import HOST, accumulation_dtype, to_device, to_host

Residual = tuple[torch.Tensor | None, ...]
_UNCHECKED = object()
RANGE_MARGIN = 2.0**-8
"""A combination of cached residuals whose magnitude bound stays below this share of the dtype's largest value is
taken as finite without a pass over it (see :func:`within_range`)."""


def magnitude_bound(residual: Residual) -> float:
    """An upper bound of ``max|value|`` over all of the residual's streams: ``inf`` or ``nan`` if any is not finite.

    One ``aminmax`` pass per stream; the sum of the streams' ``|min| + |max|`` keeps the bound simple and lets a
    non-finite value anywhere propagate into it.
    """
    return magnitude_bounds([residual])[0]


def magnitude_bounds(residuals: list[Residual]) -> list[float]:
    """:func:`magnitude_bound` of each residual; all their extremes come back to the host in one copy."""
    extremes, owners = [], []
    for index, residual in enumerate(residuals):
        for stream in residual:
            if stream is not None and stream.numel():
                extremes.append(torch.stack(stream.aminmax()).to(accumulation_dtype(stream.dtype)))
                owners.append(index)
    bounds = [0.0] * len(residuals)
    if extremes:
        values = torch.cat(extremes).tolist()
        for position, owner in enumerate(owners):
            bounds[owner] += abs(values[2 * position]) + abs(values[2 * position + 1])
    return bounds


def within_range(weights: list[float], bounds: list[float], dtype: torch.dtype) -> bool:
    """Whether ``sum_k weights[k] * values[k]``, with ``|values[k]|`` bounded by ``bounds[k]``, stays far inside
    ``dtype``'s range (below ``RANGE_MARGIN`` of its largest value).

    Adding such a combination to finite activations cannot overflow unless the activations themselves sit at the edge
    of the range; a ``nan`` or ``inf`` bound is never within it.
    """
    bound = sum(abs(weight) * value for weight, value in zip(weights, bounds, strict=True))
    return bound <= torch.finfo(dtype).max * RANGE_MARGIN


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
    used = torch.clamp(counts.to(device=times.device, dtype=torch.int64), min=1, max=order + 1)
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


def relative_l1(current: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row ``mean|current - reference| / mean|reference|`` as float64 on the host.

    Args:
        current: ``(rows, ...)`` values.
        reference: ``(rows, ...)`` values to compare with.
        scale: :func:`l1_scale` of ``reference``, when already known.
    """
    return to_host(device_relative_l1(current, reference, scale))


def device_relative_l1(
    current: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`relative_l1` left on the values' device, averaged in at least float32 (several can then come back to the
    host in one copy)."""
    difference = (current - reference).abs_().flatten(1).mean(1, dtype=accumulation_dtype(current.dtype))
    return difference / (l1_scale(reference) if scale is None else scale)


def l1_scale(reference: torch.Tensor) -> torch.Tensor:
    """Per-row ``mean|reference|`` (at least 1e-12), averaged in at least float32: the denominator of
    :func:`relative_l1`."""
    return reference.abs().flatten(1).mean(1, dtype=accumulation_dtype(reference.dtype)).clamp_min(1e-12)


def scalar_lagrange_weights(times: list[float], time: float, order: int) -> list[float]:
    """:func:`lagrange_weights` of one row, in plain floats: the fast path when every row shares its points.

    Args:
        times: Times of the stored points, newest first.
        time: The time to extrapolate to.
        order: The wanted polynomial degree; ``min(order, len(times) - 1)`` is used.

    Returns:
        One weight per point used (the newest ``degree + 1``).
    """
    points = times[: max(1, min(order + 1, len(times)))]
    weights = []
    for i, t_i in enumerate(points):
        weight = 1.0
        for j, t_j in enumerate(points):
            if j != i:
                weight *= (time - t_j) / (t_i - t_j)
        weights.append(weight)
    return weights


def weighted_sum(
    values: list[torch.Tensor | None], weights: list[float], base: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``base + sum_k weights[k] * values[k]`` as one new tensor (``None`` values add nothing).

    Without ``base`` the first term starts the sum; with nothing to add, ``base`` itself is returned. The result has
    ``base``'s dtype (else the first value's). A sum of several terms in half precision accumulates in float32 and is
    rounded once; one term is a single operation, computed in float32 and rounded once by torch itself.
    """
    terms = [(value, weight) for value, weight in zip(values, weights, strict=True) if value is not None]
    if not terms:
        return base
    dtype = base.dtype if base is not None else terms[0][0].dtype
    accumulate = accumulation_dtype(dtype) if len(terms) > 1 else dtype
    (first, first_weight), rest = terms[0], terms[1:]
    if base is None:
        total = torch.mul(first.to(accumulate), first_weight)
    elif accumulate != dtype:
        total = base.to(accumulate).add_(first, alpha=first_weight)
    else:
        total = torch.add(base, first, alpha=first_weight)  # (a wider ``first`` widens the sum)
    for value, weight in rest:
        total.add_(value, alpha=weight)
    return total.to(dtype)


class ResidualHistory:
    """The newest computed residuals of one block group, per batch row, with the times they were computed at.

    A residual is a tuple of stream tensors (hidden states, and encoder hidden states for dual-stream blocks),
    each ``(batch, ...)``. History is a list of slots, newest first; when the whole batch computes, a push just
    puts the new residual in front (no copy). Stored tensors are never modified while stored: a partial push builds
    new slots, and only the slot a push is about to drop may receive the new residual (:meth:`spare_slot`).

    While every push covers the whole batch, all rows share their slot times, and reuse and forecast take a fast
    path with plain-float weights; a partial push switches to per-row weights for the rest of the generation.

    Args:
        depth: How many computed steps to keep (forecast order + 1).
        batch: Rows in the batch.
        counts: ``(batch,)`` int64 tensor to keep the counts in (e.g. a column of a table of all groups' counts),
            updated in place; a new one by default.

    Attributes:
        slots: Newest-first residuals, each a tuple of ``(batch, ...)`` stream tensors, on the device and in the
            dtype of the hidden states.
        slot_times: ``(batch,)`` float64 time of each slot's residual, per row (on the host).
        counts: ``(batch,)`` how many slots hold a residual of each row (on the host).

    Row indices (``rows``) are host tensors; they index the slots through :func:`~runtime.devices.to_device`.
    """

    def __init__(self, depth: int, batch: int, counts: torch.Tensor | None = None) -> None:
        self.depth = depth
        self.batch = batch
        self.slots: list[Residual] = []
        self.slot_times: list[torch.Tensor] = []
        self._slot_bounds: list[float | None] = []  # see slot_bound; None until first read
        self.counts = torch.zeros(batch, dtype=torch.int64, device=HOST) if counts is None else counts.zero_()
        self._shared_times: list[float] | None = []  # slot times when all rows share them, else None
        self._newest_finite: torch.Tensor | None | object = _UNCHECKED  # see latest_finite
        self._last_change: torch.Tensor | None = None
        self._whole_pushes = 0  # after ``depth`` pushes of the whole batch, every count is ``depth``

    @property
    def full(self) -> bool:
        """Whether every row is known to hold ``depth`` residuals (after ``depth`` pushes of the whole batch)."""
        return self._whole_pushes >= self.depth

    @property
    def last_change(self) -> torch.Tensor:
        """``(batch,)`` relative L1 change between the two newest residuals of the hidden stream (0 with fewer).

        Computed on first read after a push (only policies that read the forecast gap need it).
        """
        if self._last_change is None:
            change = torch.zeros(self.batch, dtype=torch.float64, device=HOST)
            if len(self.slots) >= 2 and self.slots[0][0] is not None:
                moved = relative_l1(self.slots[1][0], self.slots[0][0])  # relative to the newest
                change = torch.where(self.counts >= 2, moved, change)
            self._last_change = change
        return self._last_change

    def push(self, rows: torch.Tensor, residual: Residual, time: float) -> None:
        """Stores a newly computed residual for ``rows`` (a sorted index tensor into the batch)."""
        if self.slots:
            self._check_shapes(residual)
        if rows.numel() == self.batch:
            self.slots.insert(0, residual)
            self._slot_bounds.insert(0, None)
            self.slot_times.insert(0, torch.full((self.batch,), float(time), dtype=torch.float64, device=HOST))
            if self._shared_times is not None:
                self._shared_times.insert(0, float(time))
                del self._shared_times[self.depth :]
        else:
            self._push_rows(rows, residual, time)
            self._shared_times = None
        del self.slots[self.depth :]
        del self.slot_times[self.depth :]
        del self._slot_bounds[self.depth :]
        self._newest_finite = _UNCHECKED
        if rows.numel() == self.batch:
            if self._whole_pushes < self.depth:
                self.counts.add_(1).clamp_(max=self.depth)
                self._whole_pushes += 1
        else:
            self.counts[rows] = torch.clamp(self.counts[rows] + 1, max=self.depth)
        self._last_change = None

    def latest(self, rows: torch.Tensor, copy: bool = True) -> Residual:
        """The most recent residual of ``rows``; ``copy=False`` may return the stored tensors themselves."""
        everyone = rows.numel() == self.batch and not copy
        newest = self._newest()
        if not everyone:
            rows = to_device(rows, next(r for r in newest if r is not None))
        return tuple(None if s is None else _take(s, rows, everyone) for s in newest)

    def shared_points(self, order: int) -> list[float] | None:
        """Times of the slots a forecast of ``order`` uses (order 0: a reuse), when every row shares them.

        Returns:
            The newest ``min(order + 1, slots)`` times, or ``None`` when rows differ (after a partial push).
        """
        if self._shared_times is None or not self._shared_times:
            return None
        return self._shared_times[: min(order + 1, len(self._shared_times))]

    def forecast_weights(self, rows: torch.Tensor, time: float, order: int) -> list[float] | torch.Tensor:
        """Weights of the newest slots in the forecast of ``rows`` to ``time``.

        Returns:
            One float per slot used when the rows share their slot times, else ``(slots, rows)`` float64 weights.
        """
        self._newest()
        if self._shared_times is not None:
            return scalar_lagrange_weights(self._shared_times, time, order)
        everyone = rows.numel() == self.batch
        times = torch.stack([_take(t, rows, everyone) for t in self.slot_times])
        return lagrange_weights(times, _take(self.counts, rows, everyone), time, order)

    def combine(
        self, rows: torch.Tensor, weights: list[float] | torch.Tensor, base: Residual | None = None
    ) -> Residual:
        """``base + sum_k weights[k] * slot_k`` of ``rows``, per stream (new tensors, one per stream).

        Args:
            rows: Sorted index of the rows.
            weights: From :meth:`forecast_weights`.
            base: Tensors of ``rows`` to add the combination to (a stream that is ``None`` there gives ``None``),
                so that a forecast group output costs one new tensor instead of two.
        """
        everyone = rows.numel() == self.batch
        if not everyone:  # one copy of the index to the slots' device for all of them
            rows = to_device(rows, next(r for r in self._newest() if r is not None))
        result = []
        for stream in range(len(self._newest())):
            if self.slots[0][stream] is None or (base is not None and base[stream] is None):
                result.append(None)
                continue
            start = None if base is None else base[stream]
            values = [_take(self.slots[k][stream], rows, everyone) for k in range(len(weights))]
            if not isinstance(weights, torch.Tensor):
                result.append(weighted_sum(values, weights, base=start))
                continue
            # per-row weights: accumulated in at least float32, like weighted_sum
            dtype = start.dtype if start is not None else values[0].dtype
            row_weights = weights.to(device=values[0].device, dtype=accumulation_dtype(dtype), non_blocking=True)
            total = start
            for k, value in enumerate(values):
                weight = row_weights[k].reshape(-1, *([1] * (value.ndim - 1)))
                if total is None:
                    total = weight * value
                else:
                    total = torch.addcmul(total, weight, value) if k == 0 else total.addcmul_(weight, value)
            total = total.to(dtype)
            result.append(total)
        return tuple(result)

    def spare_slot(self) -> Residual | None:
        """The slot the next whole-batch push will drop, whose memory may hold the new residual; else ``None``.

        Only while all rows share their slots (a partial push builds new slots that may share nothing).
        """
        if self._shared_times is None or len(self.slots) < self.depth:
            return None
        return self.slots[-1]

    def forecast(self, rows: torch.Tensor, time: float, order: int) -> Residual:
        """The polynomial extrapolation of ``rows``' residual to ``time`` (new tensors)."""
        return self.combine(rows, self.forecast_weights(rows, time, order))

    def latest_finite(self, rows: torch.Tensor) -> torch.Tensor | None:
        """``None`` if the newest residual of ``rows`` is finite, else a ``(rows,)`` finiteness mask.

        Finiteness is known from the slot's magnitude bound, else checked at the first call after a push, not at every
        reuse (forecasts check their output, see :meth:`forecast_within_range`).
        """
        newest = self._newest()  # raises the clear error on an empty history
        if math.isfinite(self.slot_bound(0)):
            return None
        if self._newest_finite is _UNCHECKED:
            self._newest_finite = finite_row_mask(newest)
        mask = self._newest_finite
        if mask is None:
            return None
        finite = mask[rows]
        return None if bool(finite.all()) else finite

    def forecast_within_range(self, weights: list[float], dtype: torch.dtype) -> bool:
        """Whether a combination of the newest slots with these plain-float weights cannot overflow ``dtype``.

        When it can (or a slot is not finite), the caller checks the combination itself.
        """
        return within_range(weights, [self.slot_bound(k) for k in range(len(weights))], dtype)

    def slot_bound(self, k: int) -> float:
        """:func:`magnitude_bound` of slot ``k`` (newest first), computed at its first read and kept while stored.

        Policies that never skip never pay for it; stored tensors are never modified, so it stays valid.
        """
        bound = self._slot_bounds[k]
        if bound is None:
            bound = self._slot_bounds[k] = magnitude_bound(self.slots[k])
        return bound

    def _newest(self) -> Residual:
        if not self.slots:
            raise RuntimeError("ResidualHistory is empty: a group must compute before it can be reused.")
        return self.slots[0]

    def _push_rows(self, rows: torch.Tensor, residual: Residual, time: float) -> None:
        new_slots, new_times = [], []
        device_rows = to_device(rows, next(r for r in residual if r is not None))
        for k in range(min(len(self.slots) + 1, self.depth)):
            source = residual
            if k > 0:
                source = tuple(None if s is None else s.index_select(0, device_rows) for s in self.slots[k - 1])
            if k < len(self.slots):
                base, base_times = self.slots[k], self.slot_times[k]
            else:
                base = tuple(None if r is None else r.new_zeros((self.batch, *r.shape[1:])) for r in residual)
                base_times = torch.zeros(self.batch, dtype=torch.float64, device=HOST)
            new_slots.append(
                tuple(
                    None if b is None or s is None else b.index_copy(0, device_rows, s.to(b.dtype))
                    for b, s in zip(base, source, strict=True)
                )
            )
            source_times = torch.full((rows.numel(),), float(time), dtype=torch.float64, device=HOST)
            if k > 0:
                source_times = self.slot_times[k - 1][rows]
            new_times.append(base_times.index_copy(0, rows, source_times))
        self.slots, self.slot_times = new_slots, new_times
        self._slot_bounds = [None] * len(new_slots)

    def _check_shapes(self, residual: Residual) -> None:
        for stored, value in zip(self.slots[0], residual, strict=True):
            if stored is not None and value is not None and stored.shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"A block group's residual changed shape from {tuple(stored.shape[1:])} to "
                    f"{tuple(value.shape[1:])} within one generation: the group spans blocks whose hidden-state "
                    "layouts differ (e.g. dual- and single-stream blocks); use more groups so none spans both."
                )


def finite_row_mask(residual: Residual) -> torch.Tensor | None:
    """``None`` when every value is finite (one sum per stream, one copy to the host), else a per-row finiteness mask
    on the host."""
    streams = [r for r in residual if r is not None]
    # A sum is finite only if every term is (an overflowing sum of finite values merely takes the slow path).
    sums = torch.stack([r.sum(dtype=accumulation_dtype(r.dtype)) for r in streams])
    if all(math.isfinite(value) for value in sums.tolist()):
        return None
    finite = torch.ones(streams[0].shape[0], dtype=torch.bool, device=streams[0].device)
    for stream in streams:
        finite &= torch.isfinite(stream).flatten(1).all(dim=1)
    return finite.to(HOST)


def read_slot_bounds(histories: list[ResidualHistory], count: int) -> None:
    """Computes the unknown magnitude bounds of the newest ``count`` slots of several histories with one copy to the
    host, instead of one per slot (see :meth:`ResidualHistory.slot_bound`)."""
    missing = [
        (history, k)
        for history in histories
        for k in range(min(count, len(history.slots)))
        if history._slot_bounds[k] is None
    ]
    if missing:
        for (history, k), bound in zip(missing, magnitude_bounds([h.slots[k] for h, k in missing]), strict=True):
            history._slot_bounds[k] = bound


def _take(tensor: torch.Tensor, rows: torch.Tensor, everyone: bool) -> torch.Tensor:
    """``tensor[rows]`` (host ``rows``, copied to ``tensor``'s device), or ``tensor`` itself for every row."""
    return tensor if everyone else tensor[to_device(rows, tensor)]

"""Residual application: what a group's skipping rows get instead of computing, and what its computing rows keep.

A group's residual is its output minus its input. Rows that REUSE add the newest cached residual to their input;
rows that FORECAST add its Taylor extrapolation to the current time (:mod:`runtime.forecast`); rows that COMPUTE
run the group's blocks, and its last block stores their new residual. A row whose cached or forecast residual is
not finite falls back to COMPUTE, together with its sample's other guidance half.
"""

from __future__ import annotations

import torch

from .accounting import EngineStats
from .actions import Action
from .decisions import RowIndex
from .devices import HOST, accumulation_dtype, to_device
from .forecast import (
    Residual,
    finite_row_mask,
    read_slot_bounds,
    relative_l1,
    scalar_lagrange_weights,
    weighted_sum,
    within_range,
)
from .state import GenerationState, GroupState, SpanSum


class ResidualCache:
    """Applies cached or forecast residuals to the rows that skip a group and stores those of the rows that compute it.

    Args:
        num_groups: Block groups.
        order: Taylor order of FORECAST.
        stats: The engine's counters (reuses, forecasts, fallbacks, merged groups).
        rows: Index tensors shared with the rest of the engine.
        track_forecast_error: Keep each group's ``forecast_error`` (for policies that read it).
    """

    def __init__(
        self, num_groups: int, order: int, stats: EngineStats, rows: RowIndex, track_forecast_error: bool
    ) -> None:
        self.num_groups = num_groups
        self.order = order
        self.stats = stats
        self.rows = rows
        self.track_forecast_error = track_forecast_error

    def apply(
        self, state: GenerationState, group_index: int, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gives REUSE and FORECAST rows their group output (input plus cached residual); the rest pass through.

        Rows whose cached or forecast residual is not finite are moved to COMPUTE and counted as fallbacks, together
        with the other guidance half of their sample (whose decision it shares).
        When every row takes the same action and the following groups skip the same way from the same computed
        steps, this group applies the whole run at once (:meth:`_apply_span`) and the others pass their input
        through.
        """
        decision = state.decision
        if decision.passes_through[group_index]:
            return hidden, encoder
        if decision.shared is not None:
            output = self._apply_span(state, group_index, hidden, encoder)
            if output is not None:
                return output
        history = state.groups[group_index].history
        skips: list[tuple[Action, torch.Tensor, Residual, torch.Tensor | None]] = []
        for kind, rows in (
            (Action.REUSE, decision.reuse_rows[group_index]),
            (Action.FORECAST, decision.forecast_rows[group_index]),
        ):
            if rows.numel() == 0:
                continue
            if kind == Action.REUSE:
                residual = history.latest(rows, copy=False)
                finite = history.latest_finite(rows)  # checked once, when the residual was stored
            else:
                weights = history.forecast_weights(rows, state.time, self.order)
                if rows.numel() == state.rows:  # the group's output in one new tensor per stream
                    output = history.combine(rows, weights, base=(hidden, encoder))
                    if (
                        not isinstance(weights, torch.Tensor) and history.forecast_within_range(weights, hidden.dtype)
                    ) or finite_row_mask(output) is None:
                        hidden = output[0]
                        encoder = output[1] if encoder is not None and output[1] is not None else encoder
                        self.stats.forecasts += rows.numel()
                        continue
                residual = history.combine(rows, weights)
                finite = finite_row_mask(residual)  # also catches an overflowing extrapolation
            skips.append((kind, rows, residual, finite))
        broken = [rows[~finite] for _, rows, _, finite in skips if finite is not None]
        # a sample's guidance halves share its decision: a row that falls back takes its partner row with it
        broken_rows = torch.isin(state.row_samples, state.row_samples[torch.cat(broken)]) if broken else None
        fallback: list[torch.Tensor] = []
        for kind, rows, residual, _ in skips:
            good = rows
            if broken_rows is not None:
                keep = ~broken_rows[rows]
                if not bool(keep.all()):
                    fallback.append(rows[~keep])
                    good = rows[keep]
                    kept = to_device(torch.nonzero(keep).flatten(), residual[0])
                    residual = tuple(None if r is None else r.index_select(0, kept) for r in residual)
            if good.numel() == 0:
                continue
            hidden = _add_rows(hidden, good, residual[0])
            if encoder is not None and residual[1] is not None:
                encoder = _add_rows(encoder, good, residual[1])
            if kind == Action.REUSE:
                self.stats.reuses += good.numel()
            else:
                self.stats.forecasts += good.numel()
        if fallback:
            moved = torch.cat(fallback)
            self.stats.fallbacks += moved.numel()
            decision.compute_rows[group_index] = torch.sort(torch.cat([decision.compute_rows[group_index], moved]))[0]
            if decision.computes is None:
                decision.computes = decision.row_actions == Action.COMPUTE
            decision.computes[moved, group_index] = True
            decision.shared = None  # the rows no longer all do the same
        return hidden, encoder

    def _apply_span(
        self, state: GenerationState, first: int, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Skips ``first`` and the groups after it that take the same action from the same computed steps at once.

        Their summed residuals (kept in ``state.span_sums`` until one of them computes again) are read instead of
        each group's: a skipped step then reads two cached tensors, not two per group.

        Returns:
            The output of the run's last group, or ``None`` when the run is a single group, some of its cached
            residuals are not finite, or the forecast overflows (the groups then apply their own, with fallbacks).
        """
        decision = state.decision
        action = decision.shared[first]
        if action == Action.COMPUTE:
            return None
        order = self.order if action == Action.FORECAST else 0
        points = state.groups[first].history.shared_points(order)
        last = first
        while (
            points is not None
            and last + 1 < self.num_groups
            and decision.shared[last + 1] == action
            and state.groups[last + 1].history.shared_points(order) == points
        ):
            last += 1
        if last == first:
            return None
        span = state.span_sums.get((first, last))
        if span is None or span.points != points:  # (a push to any member drops the span's sums)
            members = [state.groups[g].history for g in range(first, last + 1)]
            read_slot_bounds(members, len(points))  # every member's bounds in one copy from the device
            everyone = self.rows.every_row(state.rows)
            # a forecast's output is checked below; a reuse relies on the residuals being finite
            if action == Action.REUSE and any(history.latest_finite(everyone) is not None for history in members):
                return None
            sums = [_sum_streams([history.slots[k] for history in members]) for k in range(len(points))]
            if any(total is None for total in sums):
                return None
            bounds = [sum(history.slot_bound(k) for history in members) for k in range(len(points))]
            span = state.span_sums[(first, last)] = SpanSum(points, sums, bounds)
        weights = scalar_lagrange_weights(points, state.time, order)
        output = tuple(
            None if base is None else weighted_sum([total[stream] for total in span.sums], weights, base=base)
            for stream, base in enumerate((hidden, encoder))
        )
        if (
            action == Action.FORECAST
            and not within_range(weights, span.bounds, hidden.dtype)
            and finite_row_mask(output) is not None
        ):
            return None
        counter = "reuses" if action == Action.REUSE else "forecasts"
        setattr(self.stats, counter, getattr(self.stats, counter) + state.rows * (last - first + 1))
        self.stats.merged_groups += last - first
        for g in range(first + 1, last + 1):
            decision.passes_through[g] = True
        return output[0], output[1]

    def store(
        self,
        state: GenerationState,
        group_index: int,
        rows: torch.Tensor,
        hidden: torch.Tensor,
        encoder: torch.Tensor | None,
    ) -> None:
        """Keeps the group's freshly computed residual of ``rows`` (group output minus group input)."""
        group = state.groups[group_index]
        input_hidden, input_encoder = group.group_input
        forecast = _forecast_to_compare(state, group, rows) if self.track_forecast_error else None
        spare = group.history.spare_slot()  # used only when the whole batch computes (see _difference)
        residual_hidden = _difference(hidden, input_hidden, rows, spare[0] if spare else None)
        residual_encoder = None
        if encoder is not None and input_encoder is not None and encoder.shape == input_encoder.shape:
            residual_encoder = _difference(encoder, input_encoder, rows, spare[1] if spare else None)
        if self.track_forecast_error:
            _record_forecast_error(state, group, rows, forecast, residual_hidden)
        group.computed(rows, (residual_hidden, residual_encoder), state.time, state.rows, state.probe_residual)
        state.drop_span_sums(group_index)


def _forecast_to_compare(state: GenerationState, group: GroupState, rows: torch.Tensor) -> tuple | None:
    """The group's first-order forecast of ``rows`` to this step and which rows have one, before a compute is stored.

    Made before the new residual is written (it may go into the slot the push drops, see ``spare_slot``).
    """
    history = group.history
    if len(history.slots) < 2 or history.slots[0][0] is None:
        return None
    able = _rows(history.counts, rows) >= 2
    if not bool(able.any()):
        return None
    (forecast, *_) = history.combine(rows, history.forecast_weights(rows, state.time, 1))
    return forecast, able


def _record_forecast_error(
    state: GenerationState, group: GroupState, rows: torch.Tensor, forecast: tuple | None, residual: torch.Tensor
) -> None:
    """Keeps, for ``rows``, how far the group's first-order forecast to this step is from ``residual`` (computed)."""
    if group.forecast_error is None:
        group.forecast_error = torch.zeros(state.rows, dtype=torch.float64, device=HOST)
    if forecast is None:
        return
    predicted, able = forecast
    error = torch.where(able, relative_l1(predicted, residual), 0.0)
    group.forecast_error.index_copy_(0, rows, error)


def _rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` (host ``rows`` on ``tensor``'s device), without a gather when ``rows`` is the whole batch in
    order."""
    return tensor if rows.numel() == tensor.shape[0] else tensor.index_select(0, to_device(rows, tensor))


def _difference(
    output: torch.Tensor, input: torch.Tensor, rows: torch.Tensor, spare: torch.Tensor | None
) -> torch.Tensor:
    """``output[rows] - input[rows]``, written into ``spare`` (a residual about to be dropped) when it fits.

    Reusing that memory saves an allocation per computed group: on CPU, a fresh activation-sized tensor often
    costs page faults.
    """
    if (
        spare is not None
        and rows.numel() == output.shape[0]
        and spare.shape == output.shape
        and spare.dtype == output.dtype == input.dtype
        and spare.is_inference() == torch.is_inference_mode_enabled()
        and not (torch.is_grad_enabled() and (output.requires_grad or input.requires_grad))
    ):
        return torch.sub(output, input, out=spare)
    return _rows(output, rows) - _rows(input, rows)


def _sum_streams(residuals: list[Residual]) -> Residual | None:
    """Stream-wise sum of several groups' residuals (a ``None`` stream adds nothing); ``None`` if shapes differ.

    A sum of half-precision residuals is kept in float32 (see :func:`~runtime.devices.accumulation_dtype`).
    """
    first: list[torch.Tensor | None] = [None] * len(residuals[0])
    total: list[torch.Tensor | None] = [None] * len(residuals[0])
    for residual in residuals:
        for stream, value in enumerate(residual):
            if value is None:
                continue
            if first[stream] is None:
                first[stream] = value
            elif first[stream].shape != value.shape:
                return None
            elif total[stream] is None:
                wide = accumulation_dtype(value.dtype)
                total[stream] = first[stream] + value if wide == value.dtype else first[stream].to(wide).add_(value)
            else:
                total[stream].add_(value)
    # a stream only one group has is that group's residual itself (stored tensors are never modified)
    return tuple(first[s] if total[s] is None else total[s] for s in range(len(total)))


def _add_rows(tensor: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``tensor`` with ``values`` added to ``rows`` (a plain sum when ``rows`` is the whole batch)."""
    values = values.to(tensor.dtype)
    if rows.numel() == tensor.shape[0]:
        return tensor + values
    return tensor.index_add(0, to_device(rows, tensor), values)

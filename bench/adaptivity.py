"""What deciding per sample is worth: the learned policy against its own static replay, the best non-learned
method and the per-sample oracle, at each target FLOP speedup.

Mean and 10th-percentile PSNR are each read off the method's upper Pareto front (see :func:`.report.psnr_at`) of
``(FLOP speedup, mean PSNR)`` and of ``(FLOP speedup, 10th-percentile PSNR)`` points. The share of step × group cells
where the samples disagree and the wall ÷ FLOP speedups are interpolated linearly between the knobs around the
target (see :func:`.report.wall_ratio_at`). The best non-learned method excludes the replay and the oracle. The
oracle is searched on the benchmark's first samples only, so it is compared with the learned policy on those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .report import _cell, _interpolate, psnr_at, wall_ratio_at

EXCLUDED_FROM_BEST = ("learned", "oracle")
"""Families the best non-learned method is not drawn from (the static replay is in family ``"learned"``)."""


def tenth_percentile(values: Sequence[float]) -> float:
    """The 10th percentile of per-sample values (linear between order statistics, as ``numpy.percentile``)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), 10))


def value_at(rows: Sequence[dict[str, Any]], speedup: float, key: str) -> float | None:
    """``row[key]`` at FLOP ``speedup``, linear between the knobs around it (knobs at one speedup averaged).

    Returns:
        ``None`` when ``speedup`` lies outside the FLOP speedups of the rows that have ``key``.
    """
    values: dict[float, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            values.setdefault(float(row["flops_speedup"]), []).append(float(row[key]))
    points = sorted((x, sum(v) / len(v)) for x, v in values.items())
    if not points or not points[0][0] - 1e-9 <= speedup <= points[-1][0] + 1e-9:
        return None
    return _interpolate(points, speedup)


def _points(rows: Sequence[dict[str, Any]], key: str, samples: int | None = None) -> list[tuple[float, float]]:
    """``(FLOP speedup, value)`` of each row: ``key`` (``"psnr"``, ``"psnr_p10"``), or, with ``samples``, the
    mean (``"psnr"``) or 10th percentile (``"psnr_p10"``) of the row's first ``samples`` per-sample PSNRs."""
    out = []
    for row in rows:
        if samples is not None:
            values = (row.get("psnr_per_sample") or [])[:samples]
            if len(values) == samples:
                out.append(
                    (
                        float(row["flops_speedup"]),
                        float(np.mean(values)) if key == "psnr" else tenth_percentile(values),
                    )
                )
        elif row.get(key) is not None:
            out.append((float(row["flops_speedup"]), float(row[key])))
    return out


def _best(groups: dict[str, list[dict[str, Any]]], key: str, target: float) -> tuple[float | None, str | None]:
    reached = {m: psnr_at(_points(rows, key), target) for m, rows in groups.items()}
    reached = {m: value for m, value in reached.items() if value is not None}
    if not reached:
        return None, None
    method = max(reached, key=reached.get)
    return reached[method], method


def _difference(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def adaptivity_summary(rows: Sequence[dict[str, Any]], targets: Sequence[float]) -> list[dict[str, Any]]:
    """One entry per target comparing the learned policy with its static replay, the best non-learned method and
    the per-sample oracle; empty without a static replay row.

    Args:
        rows: Benchmark rows; the replay's carry ``replay_of`` (the learned method's name), the learned and replay
            rows ``disagreement``, every row ``psnr_p10`` and ``psnr_per_sample``, the oracle's family ``"oracle"``.
        targets: FLOP speedups to compare at.

    Returns:
        Entries with ``target_speedup``, ``learned_method``, ``replay_method``; ``learned_psnr``, ``replay_psnr``,
        ``best_psnr`` / ``best_method`` and the same with ``_p10`` for the 10th percentile; ``minus_replay``,
        ``minus_replay_p10``, ``minus_best``, ``minus_best_p10`` (learned minus the other); ``disagreement``;
        ``learned_wall_ratio``, ``replay_wall_ratio`` and ``wall_ratio_vs_replay`` (learned's ÷ replay's);
        ``oracle_psnr``, ``oracle_p10``, ``oracle_samples`` and ``oracle_learned_psnr`` / ``oracle_learned_p10``
        (the learned policy on the oracle's samples), ``None`` without oracle rows; and ``line``.
    """
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rows_of.setdefault(row["method"], []).append(row)
    replay = next((row for row in rows if row.get("replay_of")), None)
    if replay is None:
        return []
    learned_rows, replay_rows = rows_of.get(replay["replay_of"], []), rows_of[replay["method"]]
    others = {m: group for m, group in rows_of.items() if group[0]["family"] not in EXCLUDED_FROM_BEST}
    oracle_rows = [row for row in rows if row["family"] == "oracle"]
    oracle_samples = min((int(row["samples"]) for row in oracle_rows), default=None)
    summary = []
    for target in targets:
        entry: dict[str, Any] = {
            "target_speedup": float(target),
            "learned_method": replay["replay_of"],
            "replay_method": replay["method"],
        }
        for suffix, key in (("", "psnr"), ("_p10", "psnr_p10")):
            entry[f"learned_psnr{suffix}"] = psnr_at(_points(learned_rows, key), target)
            entry[f"replay_psnr{suffix}"] = psnr_at(_points(replay_rows, key), target)
            entry[f"best_psnr{suffix}"], entry[f"best_method{suffix}"] = _best(others, key, target)
            entry[f"minus_replay{suffix}"] = _difference(entry[f"learned_psnr{suffix}"], entry[f"replay_psnr{suffix}"])
            entry[f"minus_best{suffix}"] = _difference(entry[f"learned_psnr{suffix}"], entry[f"best_psnr{suffix}"])
            oracle = psnr_at(_points(oracle_rows, key), target) if oracle_rows else None
            on_them = psnr_at(_points(learned_rows, key, oracle_samples), target) if oracle_rows else None
            entry[f"oracle_psnr{suffix}"], entry[f"oracle_learned_psnr{suffix}"] = oracle, on_them
        entry["oracle_samples"] = oracle_samples
        entry["disagreement"] = value_at(learned_rows, target, "disagreement")
        entry["learned_wall_ratio"] = wall_ratio_at(learned_rows, target)
        entry["replay_wall_ratio"] = wall_ratio_at(replay_rows, target)
        entry["wall_ratio_vs_replay"] = (
            entry["learned_wall_ratio"] / entry["replay_wall_ratio"]
            if entry["learned_wall_ratio"] is not None and entry["replay_wall_ratio"]
            else None
        )
        entry["line"] = adaptivity_line(entry)
        summary.append(entry)
    return summary


def _db(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f} dB" if signed else f"{value:.2f} dB"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def adaptivity_line(entry: dict[str, Any]) -> str:
    """One human-readable line for an :func:`adaptivity_summary` entry."""
    best = f"({entry['best_method']})" if entry["best_method"] else ""
    best_p10 = f"({entry['best_method_p10']})" if entry["best_method_p10"] else ""
    disagree = "n/a" if entry["disagreement"] is None else f"{entry['disagreement']:.1%}"
    line = (
        f"{entry['target_speedup']:g}×: learned − static replay = {_db(entry['minus_replay'])} mean, "
        f"{_db(entry['minus_replay_p10'])} p10; learned − best non-learned = {_db(entry['minus_best'])} mean {best}, "
        f"{_db(entry['minus_best_p10'])} p10 {best_p10}; samples disagree on {disagree} of cells; "
        f"wall ÷ FLOP speedup learned {_ratio(entry['learned_wall_ratio'])}, replay "
        f"{_ratio(entry['replay_wall_ratio'])} (learned ÷ replay {_ratio(entry['wall_ratio_vs_replay'])})"
    ).replace(" ;", ";")
    if entry["oracle_samples"] is not None:
        line += (
            f"; per-sample oracle (not causal, {entry['oracle_samples']} samples) {_db(entry['oracle_psnr'], False)} "
            f"mean, {_db(entry['oracle_psnr_p10'], False)} p10 vs learned {_db(entry['oracle_learned_psnr'], False)}"
            f", {_db(entry['oracle_learned_psnr_p10'], False)} on them"
        )
    return line


def adaptivity_section(results: dict[str, Any]) -> list[str]:
    """The ``results.md`` lines of the adaptivity summary and a table of the learned and replay knobs."""
    entries = results.get("adaptivity") or []
    if not entries:
        return []
    lines = [
        "",
        "## Learned vs its static replay, the best non-learned method and the per-sample oracle",
        "",
        "The static replay plays the majority schedule of the learned policy's own decisions on these samples for "
        "all of them: the gap between the two is what deciding per sample adds. p10 is the 10th-percentile sample "
        "PSNR. The best non-learned method excludes the replay and the oracle. The per-sample oracle searches a "
        "schedule for each sample against its uncached output, which no causal policy sees: an upper bound.",
        "",
    ]
    lines += [f"- {entry['line']}" for entry in entries]
    learned, replay = entries[0]["learned_method"], entries[0]["replay_method"]
    replays = {row["knob"]: row for row in results["rows"] if row["method"] == replay}
    lines += [
        "",
        "| knob | FLOP × | PSNR | p10 | replay PSNR | replay p10 | cells where samples disagree | wall ÷ FLOP "
        "| replay wall ÷ FLOP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in (r for r in results["rows"] if r["method"] == learned):
        other = replays.get(row["knob"], {})
        disagreement = row.get("disagreement")
        cells = [
            row["knob"],
            _cell(row["flops_speedup"]),
            _cell(row["psnr"]),
            _cell(row.get("psnr_p10")),
            _cell(other.get("psnr")),
            _cell(other.get("psnr_p10")),
            "–" if disagreement is None else f"{disagreement:.1%}",
            _cell(_wall_ratio(row)),
            _cell(_wall_ratio(other)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _wall_ratio(row: dict[str, Any]) -> float | None:
    if row.get("wall_speedup") is None:
        return None
    return float(row["wall_speedup"]) / float(row["flops_speedup"])

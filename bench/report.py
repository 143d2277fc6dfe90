"""Turning benchmark rows into the summary, ``results.json``, ``results.md`` and ``pareto.png``.

The summary compares, at each target FLOP speedup, the learned policy's PSNR with the best PSNR any non-learned
method reaches there. Each method's PSNR at a speedup is read off its upper Pareto front (the knob settings no other
setting of the same method beats in both speed and PSNR), linearly interpolated in speedup between neighbouring
front points. Below a method's slowest front point the front's first PSNR is used (that setting is at least that
fast); past its fastest point the method does not reach the target ("n/a").

Each target also gets the learned policy's wall ÷ FLOP speedup (1 when the wall-clock gain matches the FLOPs
saved), linearly interpolated in FLOP speedup between the knobs around the target; the spread of that ratio over the
timing rounds, and the AlwaysCompute row's (which computes everything), show how noisy the machine's timing was.

The learned policy's static replay and the per-sample oracle are neither side of that comparison; they have their
own lines (see :mod:`.adaptivity`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILY_ORDER = ("learned", "baseline", "diffusers", "oracle")
TABLE_COLUMNS = (
    "family",
    "method",
    "knob",
    "flops_speedup",
    "wall_speedup",
    "psnr",
    "psnr_p10",
    "ssim",
    "class_acc",
    "fd",
)
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "p", "d")
_LINESTYLES = ("-", "--", "-.", ":")
_LEARNED_STYLES = (("*", "-"), ("P", "--"), ("X", ":"))
"""Marker and line of the first, second, ... learned method (all drawn in red)."""
_SPECIAL_STYLES: dict[str, dict[str, Any]] = {
    "replay": {"color": "darkred", "marker": "D", "linestyle": "-.", "linewidth": 2.0, "markersize": 8, "zorder": 9},
    "oracle": {"color": "black", "marker": "*", "linestyle": ":", "linewidth": 1.6, "markersize": 12, "zorder": 8},
}
"""Styles of the learned policy's static replay and of the per-sample oracle (their markers drawn hollow)."""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper Pareto front of ``(speedup, psnr)`` points, sorted by speedup.

    A point is on the front when no other point is at least as fast with a higher PSNR, or faster with the same.
    """
    front: list[tuple[float, float]] = []
    best = -math.inf
    for speedup, psnr in sorted(points, key=lambda p: (-p[0], -p[1])):
        if psnr > best:
            front.append((speedup, psnr))
            best = psnr
    return front[::-1]


def psnr_at(points: Sequence[tuple[float, float]], speedup: float) -> float | None:
    """PSNR on the upper Pareto front of ``points`` at ``speedup`` (linear in speedup), or ``None`` if not reached."""
    front = pareto_front(points)
    if not front or front[-1][0] < speedup - 1e-9:
        return None
    if speedup <= front[0][0]:
        return front[0][1]
    return _interpolate(front, speedup)


def _interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """``y`` at ``x`` on the polyline through ``points`` (sorted by ``x``, ``x`` within their range up to 1e-9)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return min(points, key=lambda point: abs(point[0] - x))[1]


def wall_ratio_at(rows: Sequence[dict[str, Any]], speedup: float) -> float | None:
    """Wall ÷ FLOP speedup of ``rows`` (one method's) at FLOP ``speedup``, linear between the knobs around it.

    Knobs with the same FLOP speedup count as one point, their mean ratio.

    Returns:
        The interpolated ratio, or ``None`` when ``speedup`` lies outside the FLOP speedups of the rows that have a
        ``wall_speedup``.
    """
    ratios: dict[float, list[float]] = {}  # knobs at the same FLOP speedup (e.g. saturated budgets) are averaged
    for r in rows:
        if r.get("wall_speedup") is not None:
            row_speedup = float(r["flops_speedup"])
            ratios.setdefault(row_speedup, []).append(float(r["wall_speedup"]) / row_speedup)
    points = sorted((x, sum(values) / len(values)) for x, values in ratios.items())
    if not points or not points[0][0] - 1e-9 <= speedup <= points[-1][0] + 1e-9:
        return None
    return _interpolate(points, speedup)


def headline_wall_ratio(entry: dict[str, Any]) -> float | None:
    """The wall ÷ FLOP speedup of the learned method whose PSNR a summary entry gives (its line's), if any."""
    ratios = entry.get("learned_wall_ratio") or {}
    method = entry.get("learned_method")
    return ratios.get(method) if method is not None else next(iter(ratios.values()), None)


def summarize(rows: Sequence[dict[str, Any]], targets: Sequence[float]) -> list[dict[str, Any]]:
    """Learned PSNR minus the best non-learned PSNR at each target FLOP speedup.

    The learned policy's static replay (rows with ``replay_of``) is neither a learned method here nor a non-learned
    one, and the per-sample oracle (family ``"oracle"``) is no non-learned method: see :mod:`.adaptivity` for both.

    Args:
        rows: Benchmark rows (``method``, ``family``, ``flops_speedup``, ``psnr``).
        targets: FLOP speedups to compare at.

    Returns:
        One entry per target: ``target_speedup``, ``learned_psnr`` and ``learned_method`` (the best learned method
        there), ``best_psnr`` and ``best_method`` (the best non-learned method there), ``delta_psnr`` (learned minus
        best; ``None`` when either is missing),
        ``per_method`` (every method's interpolated PSNR, ``None`` where it does not reach the target),
        ``learned_wall_ratio`` (per learned method, its wall ÷ FLOP speedup there, see :func:`wall_ratio_at`) and
        ``line``.
    """
    rows_of: dict[str, list[dict[str, Any]]] = {}
    family_of: dict[str, str] = {}
    for row in rows:
        rows_of.setdefault(row["method"], []).append(row)
        family_of[row["method"]] = row["family"]
    replays = {row["method"] for row in rows if row.get("replay_of")}  # the learned policy's schedule, not itself
    series = {m: [(float(r["flops_speedup"]), float(r["psnr"])) for r in group] for m, group in rows_of.items()}
    learned = [m for m in series if family_of[m] == "learned" and m not in replays]
    others = [m for m in series if family_of[m] not in ("learned", "oracle")]
    summary = []
    for target in targets:
        per_method = {m: psnr_at(series[m], target) for m in series}
        learned_reached = {m: per_method[m] for m in learned if per_method[m] is not None}
        learned_method = max(learned_reached, key=learned_reached.get) if learned_reached else None
        learned_psnr = learned_reached[learned_method] if learned_method is not None else None
        reached = {m: per_method[m] for m in others if per_method[m] is not None}
        best_method = max(reached, key=reached.get) if reached else None
        best_psnr = reached[best_method] if best_method is not None else None
        delta = learned_psnr - best_psnr if learned_psnr is not None and best_psnr is not None else None
        entry = {
            "target_speedup": float(target),
            "learned_psnr": learned_psnr,
            "learned_method": learned_method,
            "best_psnr": best_psnr,
            "best_method": best_method,
            "delta_psnr": delta,
            "per_method": per_method,
            "learned_wall_ratio": {m: wall_ratio_at(rows_of[m], target) for m in learned},
        }
        entry["line"] = summary_line(entry, have_learned=bool(learned))
        summary.append(entry)
    return summary


def summary_line(entry: dict[str, Any], have_learned: bool = True) -> str:
    """One human-readable line for a summary entry."""
    target = f"{entry['target_speedup']:g}×"
    if entry["learned_psnr"] is not None:
        learned = f"learned {entry['learned_psnr']:.2f} dB"
    else:
        learned = "learned n/a" + ("" if have_learned else " (no learned policy)")
    if entry["best_psnr"] is not None:
        best = f"best non-learned {entry['best_psnr']:.2f} dB ({entry['best_method']})"
    else:
        best = "best non-learned n/a"
    delta = f"{entry['delta_psnr']:+.2f} dB" if entry["delta_psnr"] is not None else "n/a"
    line = f"{target}: learned − best non-learned PSNR = {delta}  [{learned}; {best}]"
    ratio = headline_wall_ratio(entry)
    return line + (f"; learned wall ÷ FLOP speedup {ratio:.2f}" if ratio is not None else "")


def sorted_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by family (learned, baseline, diffusers), then FLOP speedup, then method name."""

    def key(row: dict[str, Any]) -> tuple:
        family = FAMILY_ORDER.index(row["family"]) if row["family"] in FAMILY_ORDER else len(FAMILY_ORDER)
        return (family, row["flops_speedup"], row["method"])

    return sorted(rows, key=key)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: the settings, the summary lines and the table sorted by family then speedup."""
    cap = results["psnr_cap"]
    memory = "kept in the process" if results.get("freed_memory_kept") else "returned to the system (glibc defaults)"
    lines = [
        f"# Benchmark: {results['model']}",
        "",
        f"- scheduler {results['scheduler']}, {results['steps']} steps, guidance {results['guidance']:g}; "
        f"{results['threads']} torch thread(s); freed memory {memory}",
        f"- {results['n_samples']} samples: seeds {results['seeds'][0]}–{results['seeds'][-1]}, "
        f"classes {', '.join(str(c) for c in results['classes'])}",
        f"- PSNR and SSIM against the uncached output of the same seeds; identical images are capped at {cap:g} dB.",
        f"- FLOP speedup: engine counters for CachePilot's engine, `FlopCounterMode` over one generation (against the "
        f"uncached one) for diffusers' caches. Wall speedup: median over {results['repeats']} timing rounds "
        "in one process, after an untimed warm-up, of the ratio of the mean of the two uncached runs around a method "
        f"run to its time (each round: uncached, {results['methods_per_uncached_run']} method runs, uncached, "
        "...; rounds alternate their order); the uncached runs use the plain pipeline.",
        f"- FD: `fd_digits` of each method's {results['n_samples']} images against the held-out digits (all classes), "
        "so compare it with the AlwaysCompute row rather than read it absolutely.",
    ]
    lines.append(
        "- `FlopCounterMode` does not count PyTorch's CPU attention kernel (SDPA); engine counters and the "
        "FlopCounterMode counts leave it out alike (a few % of a block at these short token sequences)."
    )
    check = results.get("flops_check")
    if check and check.get("error"):
        lines.append(f"- FLOP cross-check on {check['method']} ({check['knob']}) failed: {check['error']}")
    elif check:
        lines.append(
            f"- FLOP cross-check on {check['method']} ({check['knob']}): engine {check['engine']:.4f}×, "
            f"FlopCounterMode {check['flop_counter']:.4f}× ({100 * check['relative_difference']:.2f}% apart)."
        )
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "## Learned vs best non-learned at equal FLOP speedup", ""]
    lines += [f"- {entry['line']}" for entry in results["summary"]] or ["- (no targets)"]
    if results["summary"]:
        targets = [f"{entry['target_speedup']:g}×" for entry in results["summary"]]
        lines += [
            "",
            "PSNR (dB) on each method's upper Pareto front at each FLOP speedup (– where it does not reach it):",
            "",
            "| method | " + " | ".join(targets) + " |",
            "|---|" + "---:|" * len(targets),
        ]
        for method in results["summary"][0]["per_method"]:
            values = [_cell(entry["per_method"][method]) for entry in results["summary"]]
            lines.append(f"| {method} | " + " | ".join(values) + " |")
    lines += adaptivity_markdown(results)
    lines += wall_section(results)
    lines += [
        "",
        "## Results",
        "",
        "| family | method | knob | FLOP × | wall × | PSNR (dB) | p10 PSNR | SSIM | class acc | FD |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted_rows(results["rows"]):
        cells = [
            row["family"],
            row["method"],
            row["knob"],
            _cell(row["flops_speedup"]),
            _cell(row["wall_speedup"]),
            _cell(row["psnr"]),
            _cell(row.get("psnr_p10")),
            _cell(row["ssim"], 3),
            _cell(row["class_acc"], 3),
            _cell(row["fd"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failures = results.get("failures") or []
    if failures:
        lines += ["", "## Failed", "", "These raised on this model and have no row:", ""]
        lines += [f"- {f['method']} ({f['knob']}): `{f['error']}`" for f in failures]
    return "\n".join(lines) + "\n"


def adaptivity_markdown(results: dict[str, Any]) -> list[str]:
    """The ``results.md`` section on the learned policy against its static replay and the oracle (see
    :func:`.adaptivity.adaptivity_section`)."""
    from .adaptivity import adaptivity_section  # it reads this module's fronts

    return adaptivity_section(results)


def wall_section(results: dict[str, Any]) -> list[str]:
    """The ``results.md`` lines on wall-clock against FLOP speedup: learned rows and AlwaysCompute, per round."""
    rows = [r for r in sorted_rows(results["rows"]) if r["family"] == "learned" or r["method"] == "AlwaysCompute"]
    if not rows:
        return []
    lines = [
        "",
        "## Wall-clock against FLOP speedup",
        "",
        "Wall ÷ FLOP speedup is 1 when the time saved matches the FLOPs saved; the time the pipeline spends outside "
        "the blocks and the cache's own work keep it below. The last column gives it for each timing round; "
        "AlwaysCompute computes everything, so its spread shows the timing noise of the run.",
        "",
        "| method | knob | FLOP × | wall × | wall ÷ FLOP | each round |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        flops = float(row["flops_speedup"])
        rounds = ", ".join(f"{ratio / flops:.2f}" for ratio in row.get("wall_speedups", []))
        cells = [row["method"], row["knob"], _cell(flops), _cell(row["wall_speedup"])]
        lines.append("| " + " | ".join([*cells, _cell(row["wall_speedup"] / flops), rounds]) + " |")
    return lines


def pareto_figure(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Writes ``pareto.png``: PSNR against FLOP speedup (left) and wall speedup (right).

    Every method has its own marker and line style; its points are drawn faintly and its upper Pareto front as a
    line. The learned policy is drawn in red, thick and on top; its static replay in dark red with open diamonds,
    the per-sample oracle (an upper bound, untimed: left panel only) in black with open stars. The AlwaysCompute
    reference (1×, capped PSNR) is left out so the axis shows the methods' range.
    """
    methods: dict[str, list[dict[str, Any]]] = {}  # in the order the methods were run: stable styles
    for row in rows:
        if row["method"] != "AlwaysCompute":
            methods.setdefault(row["method"], []).append(row)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colors = plt.get_cmap("tab10")
    learned_seen = 0  # a second learned variant (e.g. shared decisions) is red too, with its own marker and line
    for index, (method, method_rows) in enumerate(methods.items()):
        special = _SPECIAL_STYLES.get("replay" if method_rows[0].get("replay_of") else method_rows[0]["family"])
        learned = method_rows[0]["family"] == "learned" and special is None
        variant = learned_seen % len(_LEARNED_STYLES)
        learned_seen += learned
        style = {
            "color": "red" if learned else colors(index % 10),
            "marker": _LEARNED_STYLES[variant][0] if learned else _MARKERS[index % len(_MARKERS)],
            "linestyle": _LEARNED_STYLES[variant][1] if learned else _LINESTYLES[index % len(_LINESTYLES)],
            "linewidth": 2.8 if learned else 1.3,
            "markersize": 11 if learned else 6,
            "zorder": 10 if learned else 2,
            **(special or {}),
        }
        hollow = special is not None
        for axis, key in zip(axes, ("flops_speedup", "wall_speedup"), strict=True):
            points = [(r[key], r["psnr"]) for r in method_rows if r.get(key) is not None]
            if not points:
                continue
            axis.scatter(
                [p[0] for p in points],
                [p[1] for p in points],
                marker=style["marker"],
                color="none" if hollow else style["color"],
                edgecolors=style["color"],
                alpha=0.35,
                s=style["markersize"] ** 2,
                zorder=style["zorder"],
            )
            front = pareto_front(points)
            axis.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                label=method,
                markerfacecolor="none" if hollow else style["color"],
                **style,
            )
    for axis, xlabel in zip(axes, ("FLOP speedup (×)", "wall-clock speedup (×)"), strict=True):
        axis.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs uncached (dB)")
    axes[0].set_title("PSNR vs FLOP speedup", fontsize=10)
    axes[1].set_title("PSNR vs wall-clock speedup", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5) or 1, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``, which JSON can hold (NaN is not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_results(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes ``results.json``, ``results.md`` and ``pareto.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "pareto.png"}
    paths["json"].write_text(json.dumps(strict_json(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    paths["md"].write_text(markdown(results))
    title = f"{results['model']}: {results['steps']} steps, {results['n_samples']} samples"
    pareto_figure(results["rows"], paths["png"], title=title)
    return paths

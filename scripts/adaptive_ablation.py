"""Ablation of the training method: each ingredient off in turn, the same seeds and teacher, one report.

Every arm is a training run of ``train_agent.py``'s config (``--config``, default ``configs/default.yaml``) with its
own overrides. The searched teacher is shared: the first arm searches it and the others clone its schedules
(``warm_start.schedules_from``; an arm with fewer anchors takes those it names), so arms differ only in what they
switch. ``--reuse ARM=RUN_DIR`` takes an arm's results from a finished run (e.g. the ``./run train`` that produced
the shipped policy) instead of training it again.

For each arm it reports, per validation setting (scheduler and step count), the mean over budgets of the PSNR and
the FLOP speedup after the warm start and at each PPO evaluation (the one the run exported is marked), and the score
the run picks its checkpoint by (mean PSNR less overspend), and the share of step × group cells where the validation
samples did not all take the same action.

    python scripts/adaptive_ablation.py [--out runs/ablation] [--arms method no_groups ...] [--reuse method=DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from agents.config import load_config
from agents.training import HISTORY_FILE, TEACHER_FILE, Trainer
from runtime.observations import ADAPTIVE_FEATURES

SAMPLE_FEATURES = "[" + ",".join([*ADAPTIVE_FEATURES, "solver_order"]) + "]"

ARMS: dict[str, list[str]] = {
    "method": [],
    "no_groups": ["env.group_rollouts=1"],
    "no_smoothing": ["warm_start.label_smoothing=0.0"],
    "one_anchor": ["warm_start.settings=[ddim_50]", "warm_start.sweeps_at={}"],
    "sample_features": [f"env.features={SAMPLE_FEATURES}"],
}
"""Arm name -> overrides of the config (``method``: the config itself; its ``warm start`` rows are the method
without PPO)."""


def run_arm(name: str, config_path: Path, common: list[str], out: Path, teacher: Path | None) -> Path:
    """Trains one arm, cloning ``teacher``'s schedules when given; returns its folder."""
    run_dir = out / name
    if (run_dir / HISTORY_FILE).is_file():
        return run_dir
    extra = [f"warm_start.schedules_from={teacher}"] if teacher is not None else []
    config = load_config(config_path, [*common, *ARMS[name], *extra])
    started = time.perf_counter()
    Trainer(config, run_dir, wandb_mode="disabled").run()
    (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    return run_dir


def rows_of(name: str, run_dir: Path) -> list[dict[str, Any]]:
    """Every validation of one arm (the warm start, then each PPO evaluation), one row per setting and budget."""
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    exported = json.loads((run_dir / "policy-eval.json").read_text())["timesteps"]
    rows = []
    for index, entry in enumerate(history):
        stage = "warm start" if index == 0 else "PPO"
        if entry["timesteps"] == exported:
            stage += ", exported"
        common = {"arm": name, "stage": stage, "timesteps": entry["timesteps"], "score": entry["score"]}
        rows += [{**common, **point} for point in entry["points"]]
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: per arm and stage, the mean PSNR over budgets at each setting, and the score."""
    settings = list(dict.fromkeys((r.get("scheduler"), r.get("num_inference_steps")) for r in rows))
    header = " | ".join(f"{s} {n}" for s, n in settings)
    lines = [
        f"| arm | stage (timesteps) | score | {header} | cells where samples disagree |",
        "|---|---|---:|" + "---:|" * (len(settings) + 1),
    ]
    for arm, steps in dict.fromkeys((r["arm"], r["timesteps"]) for r in rows):
        mine = [r for r in rows if r["arm"] == arm and r["timesteps"] == steps]
        stage = mine[0]["stage"]
        cells = []
        for setting in settings:
            at = [r for r in mine if (r.get("scheduler"), r.get("num_inference_steps")) == setting]
            psnr = sum(r["psnr"] for r in at) / len(at)
            speedup = sum(r["flops_speedup"] for r in at) / len(at)
            cells.append(f"{psnr:.2f} ({speedup:.2f}×)")
        shares = [r["disagreement"] for r in mine if r.get("disagreement") is not None]
        cells.append(f"{100 * sum(shares) / len(shares):.1f}%" if shares else "–")
        lines.append(f"| {arm} | {stage} ({mine[0]['timesteps']}) | {mine[0]['score']:.2f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/default.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every arm")
    parser.add_argument("--reuse", action="append", default=[], metavar="ARM=RUN_DIR", help="a finished run of an arm")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for item in args.reuse:
        arm, _, folder = item.partition("=")
        if arm not in ARMS or not (Path(folder) / HISTORY_FILE).is_file():
            parser.error(f"--reuse {item}: give ARM=RUN_DIR with an arm of {list(ARMS)} and a finished run's folder.")
        target = args.out / arm
        if not target.exists():
            shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    teacher: Path | None = None
    rows = []
    for name in args.arms:
        run_dir = run_arm(name, args.config, args.set, args.out, teacher)
        teacher = teacher or run_dir / TEACHER_FILE
        rows += rows_of(name, run_dir)
        text = report(rows)
        (args.out / "ablation.md").write_text(text)
        (args.out / "ablation.json").write_text(json.dumps({"overrides": args.set, "rows": rows}, indent=1))
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

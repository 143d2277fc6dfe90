"""Ablation of the adaptive training method: each ingredient on and off, the same seeds, one report.

Every arm is a training run of ``train_agent.py``'s config (``--config``) with its own overrides; the searched
schedules are shared between arms that use the same teacher (``warm_start.schedules_from``), so only the first arm
of each teacher searches. For each arm and validation budget the report gives the FLOP speedup, the PSNR of the
policy and of its own static replay (the majority schedule of its decisions, played for every sample), their
difference, and the share of step × group cells where its samples disagree; ``warm start`` rows are the policy
after cloning (and DAgger), ``after PPO`` rows the checkpoint the run exported.

    python scripts/adaptive_ablation.py [--out runs/ablation] [--arms shared per_sample ...] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agents.config import load_config
from agents.training import HISTORY_FILE, TEACHER_FILE, Trainer
from runtime.observations import ADAPTIVE_FEATURES

ADAPTIVE = "[" + ",".join(ADAPTIVE_FEATURES) + "]"

PER_SAMPLE = ["warm_start.teacher=per_sample"]
FEATURES = [f"env.features={ADAPTIVE}"]
DAGGER = ["warm_start.dagger_rounds=2"]
BC_ONLY = ["agent.total_timesteps=1"]  # the report gives their warm-start rows only

ARMS: dict[str, tuple[str, list[str], bool]] = {
    "per_sample+features+dagger+grpo": ("per_sample", [*PER_SAMPLE, *FEATURES, *DAGGER, "env.group_rollouts=4"], True),
    "per_sample+features+dagger+ppo": ("per_sample", [*PER_SAMPLE, *FEATURES, *DAGGER], True),
    "per_sample+features": ("per_sample", [*PER_SAMPLE, *FEATURES, *BC_ONLY], False),
    "per_sample": ("per_sample", [*PER_SAMPLE, *BC_ONLY], False),
    "shared": ("shared", BC_ONLY, False),
    "shared+features+grpo": ("shared", [*FEATURES, "env.group_rollouts=4"], True),
}
"""Arm name -> (teacher, overrides, whether PPO runs after the warm start)."""


def run_arm(name: str, config_path: Path, common: list[str], out: Path, teachers: dict[str, Path]) -> Path:
    """Trains one arm (reusing its teacher's schedules when an earlier arm searched them); returns its folder."""
    teacher, overrides, _ = ARMS[name]
    run_dir = out / name
    if (run_dir / HISTORY_FILE).is_file():
        return run_dir
    extra = [f"warm_start.schedules_from={teachers[teacher]}"] if teacher in teachers else []
    config = load_config(config_path, [*common, *overrides, *extra])
    started = time.perf_counter()
    Trainer(config, run_dir, wandb_mode="disabled").run()
    (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.0f}\n")
    teachers.setdefault(teacher, run_dir / TEACHER_FILE)
    return run_dir


def rows_of(name: str, run_dir: Path) -> list[dict[str, Any]]:
    """The warm-start and exported-checkpoint evaluations of one arm, one row per budget."""
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    exported = json.loads((run_dir / "policy-eval.json").read_text())
    stages = [("warm start", history[0]["timesteps"], history[0]["points"])]
    if ARMS[name][2]:
        stages.append(("after PPO", exported["timesteps"], exported["points"]))
    rows = []
    for stage, steps, points in stages:
        for point in points:
            rows.append({"arm": name, "stage": stage, "timesteps": steps, **point})
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown table of all rows, and the mean over budgets per arm and stage."""
    lines = [
        "| arm | stage | budget | FLOP speedup | PSNR | replay PSNR | learned − replay | cells disagreeing |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        delta = row["psnr"] - row["replay_psnr"] if row.get("replay_psnr") is not None else float("nan")
        disagreement = row.get("disagreement")
        lines.append(
            f"| {row['arm']} | {row['stage']} ({row['timesteps']}) | {row['budget']:g} | {row['flops_speedup']:.2f}× "
            f"| {row['psnr']:.2f} | {row.get('replay_psnr') or float('nan'):.2f} | {delta:+.2f} "
            f"| {'' if disagreement is None else f'{disagreement:.1%}'} |"
        )
    lines += ["", "| arm | stage | mean PSNR | mean replay PSNR | mean learned − replay |", "|---|---|---:|---:|---:|"]
    keys = list(dict.fromkeys((row["arm"], row["stage"]) for row in rows))
    for arm, stage in keys:
        mine = [r for r in rows if r["arm"] == arm and r["stage"] == stage]
        psnr = sum(r["psnr"] for r in mine) / len(mine)
        replay = sum(r["replay_psnr"] for r in mine) / len(mine)
        lines.append(f"| {arm} | {stage} | {psnr:.2f} | {replay:.2f} | {psnr - replay:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/default.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every arm")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    teachers: dict[str, Path] = {}
    rows = []
    for name in args.arms:
        run_dir = run_arm(name, args.config, args.set, args.out, teachers)
        teachers.setdefault(ARMS[name][0], run_dir / TEACHER_FILE)
        rows += rows_of(name, run_dir)
        text = report(rows)
        (args.out / "ablation.md").write_text(text)
        (args.out / "ablation.json").write_text(json.dumps({"overrides": args.set, "rows": rows}, indent=1))
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

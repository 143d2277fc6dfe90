"""scripts/adaptive_ablation.py's report: every validation of every arm, per setting, the exported one marked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("adaptive_ablation", REPO / "scripts" / "adaptive_ablation.py")
ablation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ablation)


def _point(scheduler: str, steps: int, budget: float, psnr: float, speedup: float) -> dict:
    return {"scheduler": scheduler, "num_inference_steps": steps, "budget": budget, "psnr": psnr,
            "flops_speedup": speedup, "disagreement": 0.1 if budget < 0.5 else 0.0}  # fmt: skip


def _run(folder: Path, history: list[tuple[int, float, float]], exported: int) -> Path:
    """A run folder whose validations give ``psnr`` at DDIM 20 and ``psnr + 2`` at DPM-Solver++ 20 per budget."""
    folder.mkdir()
    entries = [
        {
            "timesteps": steps,
            "score": score,
            "points": [
                _point("ddim", 20, 0.25, psnr, 4.0),
                _point("ddim", 20, 0.5, psnr + 1, 2.0),
                _point("dpmsolver++", 20, 0.25, psnr + 2, 4.0),
                _point("dpmsolver++", 20, 0.5, psnr + 3, 2.0),
            ],
        }
        for steps, score, psnr in history
    ]
    (folder / ablation.HISTORY_FILE).write_text(json.dumps(entries))
    (folder / "policy-eval.json").write_text(json.dumps({"timesteps": exported, "points": []}))
    return folder


def test_rows_cover_every_validation_and_mark_the_exported_one(tmp_path: Path) -> None:
    method = _run(tmp_path / "method", [(0, 37.0, 30.0), (800, 36.0, 32.0)], exported=0)
    arm = _run(tmp_path / "no_groups", [(0, 35.0, 28.0), (800, 35.5, 29.0)], exported=800)
    rows = ablation.rows_of("method", method) + ablation.rows_of("no_groups", arm)
    assert len(rows) == 16
    assert {r["stage"] for r in rows if r["arm"] == "method"} == {"warm start, exported", "PPO"}
    assert {r["stage"] for r in rows if r["arm"] == "no_groups"} == {"warm start", "PPO, exported"}
    lines = ablation.report(rows).splitlines()
    assert lines[0] == "| arm | stage (timesteps) | score | ddim 20 | dpmsolver++ 20 | cells where samples disagree |"
    assert lines[2] == "| method | warm start, exported (0) | 37.00 | 30.50 (3.00×) | 32.50 (3.00×) | 5.0% |"
    assert lines[5] == "| no_groups | PPO, exported (800) | 35.50 | 29.50 (3.00×) | 31.50 (3.00×) | 5.0% |"
    assert len(lines) == 6

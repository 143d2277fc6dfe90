"""generate.py: bad arguments stop with a message that names the flag and what to give instead."""

from __future__ import annotations

from pathlib import Path

import pytest

import generate


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "0"], "--budget 0.0: a compute fraction must lie in (0, 1]"),
        (["--budget", "1.5"], "--budget 1.5: a compute fraction must lie in (0, 1]"),
        (["--model", "no-such-model"], "no policy ships for --model no-such-model (shipped: mini-dit-digits"),
        (["--policy", "missing.safetensors"], "--policy missing.safetensors: no such file"),
        (["--classes", ","], "--classes: give at least one class label"),
        (["--seeds", "0"], "--seeds 0: must be at least 1"),
        (["--steps", "0"], "--steps 0: must be at least 1"),
        (["--classes", "3,12"], "--classes 3,12: mini-dit-digits draws classes 0..9"),
        (["--policy", "fora:x"], "--policy fora:x: 'x' is not an integer"),
        (["--policy", "taylorseer:4:7"], "--policy taylorseer:4:7: order=7: use 1, 2 or 3."),
        (["--out", "grid.txt"], "--out grid.txt: give an image file name ending in one of"),
        (["--scheduler", "pndm"], "--scheduler pndm: use one of default, ddim, dpmsolver++, euler"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        generate.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_classic_policy_runs_by_name_and_writes_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grids" / "fora.png"
    assert generate.main(["--policy", "fora:2", "--steps", "4", "--classes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "policy fora:2:" in printed and "at budget" not in printed  # a classic policy has no budget knob
    # The probe block computes at every step, the other nine at steps 0 and 2: 5.5 of 10 blocks; the outside parts
    # always run (0.5% of the FLOPs).
    assert "1.81x fewer FLOPs" in printed
    assert out.is_file()
    assert "notice" not in printed  # a classic policy has no training to compare the steps with


def test_the_learned_policy_at_other_steps_than_trained_gets_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid.png"
    assert generate.main(["--steps", "4", "--classes", "1", "--budget", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "notice: the learned policy was trained with 20 to 50 denoising steps and this run uses 4" in printed
    assert "at budget 0.3" in printed and out.is_file()


def test_a_scheduler_the_policy_was_not_trained_with_gets_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from policies import export_policy, load_policy

    policy = load_policy(Path(__file__).resolve().parents[1] / "assets" / "policies" / "mini-dit-digits.safetensors")
    policy.manifest["trained_on"] = {
        **policy.manifest["trained_on"],
        "num_inference_steps": [3, 6],
        "schedulers": ["DPMSolverMultistepScheduler"],
    }
    path = export_policy(tmp_path / "dpm-only.safetensors", policy)
    out = tmp_path / "grid.png"
    assert generate.main(["--policy", str(path), "--steps", "4", "--classes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "denoising steps" not in printed  # 4 steps lie inside the trained range
    assert (
        "notice: the learned policy was trained with DPMSolverMultistepScheduler and this run samples with "
        "DDIMScheduler" in printed
    )
    flags = ["--policy", str(path), "--scheduler", "dpmsolver++", "--steps", "4", "--classes", "1", "--out", str(out)]
    assert generate.main(flags) == 0
    printed = capsys.readouterr().out
    assert "notice" not in printed and "DPMSolverMultistepScheduler 4 steps" in printed

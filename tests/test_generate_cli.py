"""generate.py: bad arguments stop with a message that names the flag and what to give instead."""

from __future__ import annotations

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
    ],
)
def test_bad_arguments_exit_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        generate.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err

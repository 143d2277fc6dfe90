"""Bad input to train_agent.py, generate.py and benchmark.py for text and class models: a clear error naming the
flag and the fix, before any training or generation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import generate
import train_agent
from bench import cli
from tests.tiny_pipelines import build_dit_pipeline, save_text_pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    build_dit_pipeline().save_pretrained(root / "dit")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    return {"text": save_text_pipeline("pixart-alpha", root / "pixart"), "dit": root / "dit", "prompts": prompts}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "text"], r"conditioned on text, so it needs prompts: pass --prompts"),
        (["--model", "dit", "--prompts", "prompts"], r"conditioned on class labels, not prompts: drop --prompts"),
        (["--model", "dit", "--dtype", "float8"], r"--dtype float8: use one of float32, bfloat16, float16"),
        (["--model", "text", "--prompts", "missing"], r"--prompts .*missing.txt: no such file"),
    ],
)
def test_train_agent_names_the_flag(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    names = {**{k: str(v) for k, v in folders.items()}, "missing": str(tmp_path / "missing.txt")}
    argv = [names.get(flag, flag) for flag in flags] + ["--wandb-mode", "disabled", "--out", str(tmp_path / "run")]
    assert train_agent.main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # stopped before the run folder was made


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "text", "--classes", "1", "--policy", "fora:2"], r"--prompt: .* is conditioned on text"),
        (["--model", "dit", "--prompt", "a cat", "--policy", "fora:2"], r"--prompt: .* takes class labels"),
        (["--model", "dit", "--dtype", "float8", "--policy", "fora:2"], r"--dtype float8: use one of"),
    ],
)
def test_generate_names_the_flag(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    argv = [str(folders.get(flag, flag)) for flag in flags] + ["--steps", "2", "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit) as stopped:
        generate.main(argv)
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "text"], r"conditioned on text, so it needs prompts: pass --prompts"),
        (["--model", "text", "--prompts", "prompts", "--classes", "1"], r"--prompts and --classes"),
        (["--model", "dit", "--dtype", "float8"], r"--dtype float8: use one of"),
    ],
)
def test_benchmark_names_the_flag(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    argv = [str(folders.get(flag, flag)) for flag in flags] + [
        "--out",
        str(tmp_path / "b"),
        "--wandb-mode",
        "disabled",
    ]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    assert re.search(message, capsys.readouterr().err)

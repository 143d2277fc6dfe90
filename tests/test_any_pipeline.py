"""``train_agent.py``, ``generate.py`` and ``benchmark.py`` on every pipeline family, offline, on tiny random models.

For each family a tiny pipeline (with text encoders and tokenizers for the text families) is saved with
``save_pretrained``; ``train_agent.py --model FOLDER --prompts prompts.txt`` trains on it with a tiny budget (warm
start included), and the exported policies load back into their pipelines in one fresh process through
``generate.py``, and ``benchmark.py --quick`` measures each trained policy against the baselines. PixArt-Sigma runs in
bfloat16 throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import train_agent
from bench import cli
from envs.conditions import split_prompts
from policies import load_policy
from tests.digits_fixtures import ONE_SETTING_CONFIG
from tests.tiny_pipelines import build_dit_pipeline, save_text_pipeline, text_call_kwargs

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow star", "a white cat"]
FAMILIES = ("pixart-alpha", "pixart-sigma", "sd3", "flux", "flux-true-cfg", "wan", "dit")
TRUE_CFG = {"true_cfg_scale": 2.0, "negative_prompt": "bad quality"}  # FLUX with a separate negative pass
BFLOAT16 = "pixart-sigma"
TINY_BUDGET = [
    *("agent.total_timesteps=6", "agent.num_envs=2", f"agent.n_steps={STEPS}", "agent.batch_size=6"),
    *("agent.n_epochs=1", "warm_start.budgets=[0.5]", "warm_start.search_samples=2", "warm_start.demo_samples=2"),
    *("warm_start.workers=1", "warm_start.epochs=2", "warm_start.sweeps=1", "warm_start.per_group=false"),
    *("eval.every_timesteps=1000", "eval.num_samples=2", "eval.budgets=[0.5]", "eval.grid_samples=0"),
    *("checkpoint.every_timesteps=1000", f"env.num_inference_steps={STEPS}", "env.group_rollouts=2"),
]


def call_settings(family: str) -> tuple[float, dict[str, Any]]:
    """The family's guidance scale and the call arguments that keep its tiny pipeline tiny."""
    if family == "dit":
        return 4.0, {}
    kwargs = text_call_kwargs(pipeline_of(family))
    if family == "flux-true-cfg":
        kwargs.update(TRUE_CFG)
    return float(kwargs.pop("guidance_scale")), kwargs


def pipeline_of(family: str) -> str:
    """The tiny pipeline a test family runs on (FLUX with true CFG is the FLUX pipeline called differently)."""
    return "flux" if family == "flux-true-cfg" else family


class Runs:
    """Tiny pipelines saved to folders and trained once per module, on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prompts = root / "prompts.txt"
        self.prompts.write_text("\n".join(PROMPTS) + "\n")
        self.done: dict[str, Path] = {}

    def folder(self, family: str) -> Path:
        folder = self.root / pipeline_of(family)
        if not folder.is_dir():
            if family == "dit":
                build_dit_pipeline().save_pretrained(folder)
            else:
                save_text_pipeline(pipeline_of(family), folder)
        return folder

    def train(self, family: str) -> Path:
        if family not in self.done:
            guidance, kwargs = call_settings(family)
            run_dir = self.root / f"run-{family}"
            argv = ["--config", str(ONE_SETTING_CONFIG), "--model", str(self.folder(family))]
            argv += ["--wandb-mode", "disabled", "--out", str(run_dir)]
            if family != "dit":
                argv += ["--prompts", str(self.prompts)]
            if family == BFLOAT16:
                argv += ["--dtype", "bfloat16"]
            overrides = [*TINY_BUDGET, f"env.guidance_scale={guidance}", f"env.pipeline_kwargs={json.dumps(kwargs)}"]
            for override in overrides:
                argv += ["--set", override]
            assert train_agent.main(argv) == 0
            self.done[family] = run_dir
        return self.done[family]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("any-pipeline"))


@pytest.mark.parametrize("family", FAMILIES)
def test_train_agent_runs_end_to_end(runs: Runs, family: str) -> None:
    """Training writes a policy trained for this model's steps and conditions, and its held-out evaluation."""
    run_dir = runs.train(family)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())["env"]
    policy = load_policy(run_dir / "policy.safetensors")
    assert policy.trained_steps == STEPS
    assert config["dtype"] == ("bfloat16" if family == BFLOAT16 else "float32")
    if family == "dit":
        assert config["prompts"] is None
    else:  # the file's prompts, split without overlap between training and held-out prompts
        assert config["prompts"] == split_prompts(PROMPTS)
        assert not set(config["prompts"]["train"]) & set(config["prompts"]["eval"] + config["prompts"]["test"])
    (point,) = json.loads((run_dir / "policy-eval.json").read_text())["points"]
    assert point["budget"] == 0.5 and point["flops_speedup"] > 1.0
    assert 0.0 < point["ssim"] <= 1.0


def test_exported_policies_generate_in_a_fresh_process(runs: Runs, tmp_path: Path) -> None:
    """Every family's exported policy loads back into its saved pipeline in a new process and runs there."""
    commands = []
    for family in FAMILIES:
        guidance, kwargs = call_settings(family)
        argv = ["--model", str(runs.folder(family)), "--policy", str(runs.train(family) / "policy.safetensors")]
        argv += ["--steps", str(STEPS), "--guidance", str(guidance), "--budget", "0.5", "--seeds", "2"]
        argv += ["--pipeline-kwargs", json.dumps(kwargs), "--out", str(tmp_path / f"{family}.png")]
        argv += ["--classes", "3"] if family == "dit" else ["--prompt", "a purple tree"]
        if family == BFLOAT16:
            argv += ["--dtype", "bfloat16"]
        commands.append(argv)
    script = "import generate, json, sys\nfor argv in json.loads(sys.argv[1]):\n    assert generate.main(argv) == 0\n"
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fewer FLOPs") == len(FAMILIES)
    assert all((tmp_path / f"{family}.png").is_file() for family in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_benchmark_quick_runs_on_every_family(runs: Runs, family: str, tmp_path: Path) -> None:
    """``benchmark.py --quick`` measures the family's trained policy, its static replay and the baselines on the
    held-out conditions: the test prompts (``--prompts``) of the text families, held-out classes of DiT."""
    guidance, kwargs = call_settings(family)
    config = {
        "model": str(runs.folder(family)),
        "steps": STEPS,
        "guidance": guidance,
        "pipeline_kwargs": kwargs,
        "seeds": "1000000-1000001",
        "repeats": 1,
        "warmup_steps": 1,
        "methods": {
            "fora": {"intervals": [2]},
            "first_block": {"thresholds": []},
            "teacache": {"thresholds": []},
            "taylorseer": {"intervals": [2], "orders": [1]},
            "delta_dit": {"intervals": []},
            # diffusers' own cache is measured on one family: it is diffusers' code, not the family layer's
            "diffusers_first_block": {"thresholds": [0.1] if family == "pixart-alpha" else []},
            "diffusers_taylorseer": {"intervals": []},
            "diffusers_magcache": {"thresholds": []},
            "learned": {"budgets": [0.5]},
        },
        "quick": {"repeats": 1},
    }
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    policy = runs.train(family) / "policy.safetensors"
    argv = ["--config", str(path), "--quick", "--policy", str(policy)]
    argv += ["--classes", "7,8"] if family == "dit" else ["--prompts", str(runs.prompts)]
    if family == BFLOAT16:
        argv += ["--dtype", "bfloat16"]
    results = cli.main([*argv, "--out", str(tmp_path / "out"), "--wandb-mode", "disabled", "--no-progress"])
    assert results["classes"] == ([7, 8] if family == "dit" else split_prompts(PROMPTS)["test"])
    methods = {row["method"] for row in results["rows"]}
    assert {"CachePilot (learned)", "FORA", "TaylorSeer", "AlwaysCompute"} <= methods
    assert "CachePilot (learned, static replay)" in methods
    learned = next(row for row in results["rows"] if row["method"] == "CachePilot (learned)")
    assert learned["flops_speedup"] > 1.0 and learned["class_acc"] is None
    assert (tmp_path / "out" / "results.json").is_file()


def test_bfloat16_run_loads_the_pipeline_in_bfloat16(runs: Runs) -> None:
    """The bfloat16 run's reference cache identity and exported policy say bfloat16; generation casts to float32."""
    from envs.config import EnvConfig, from_dict
    from envs.pipelines import make_sampler

    config = yaml.safe_load((runs.train(BFLOAT16) / "config.yaml").read_text())["env"]
    sampler = make_sampler(from_dict(EnvConfig, config, prefix="env."))
    assert sampler.transformer.dtype == torch.bfloat16
    images = sampler(config["prompts"]["test"][:1], [0], STEPS, config["guidance_scale"])
    assert images.dtype == torch.float32 and torch.isfinite(images).all()

"""benchmark.py on a tiny random DiT: the files and their schema, FLOP counting of every method family, hook
removal, the summary's Pareto interpolation, W&B logging and flag errors."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import runtime
from bench import cli
from bench.config import load_config
from bench.diffusers_caches import (
    DiffusersFirstBlockCache,
    DiffusersMagCache,
    DiffusersTaylorSeer,
    MagCacheCalibration,
)
from bench.methods import EngineMethod, Method, Settings
from bench.report import markdown, pareto_front, psnr_at, summarize, wall_ratio_at
from bench.runner import flops_cross_check, uncached_reference
from envs.config import ConfigError
from policies import FORA, export_schedule, load_policy
from reporting.evaluation import trained_steps_notice
from runtime import EngineOptions
from tests.agents.wandb_records import read_offline_run
from tests.digits_fixtures import tiny_digits_pipeline
from zoo.pipelines import MiniDiTPipeline

STEPS = 6
NUM_LAYERS = 5
SEEDS = "1000000-1000003"
REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {"method", "family", "knob", "flops_speedup", "wall_speedup", "psnr", "ssim", "class_acc", "fd"}
TOP_KEYS = {"model", "scheduler", "steps", "n_samples", "seeds", "classes", "rows", "summary"}

TINY_CONFIG: dict[str, Any] = {
    "model": "tiny-random-dit",
    "repeats": 1,
    "warmup_steps": 1,
    "methods": {
        "fora": {"intervals": [2, 3]},
        "first_block": {"thresholds": [0.1]},
        "teacache": {"thresholds": [0.2]},
        "taylorseer": {"intervals": [2], "orders": [1]},
        "delta_dit": {"intervals": [2], "spans": [1.0]},
        "diffusers_first_block": {"thresholds": [0.05, 10.0]},
        "diffusers_taylorseer": {"intervals": [2], "orders": [1, 2], "disable_cache_before_step": 1},
        "diffusers_magcache": {"thresholds": [0.5], "max_skip_steps": [2], "retention_ratio": 0.2},
        "learned": {"budgets": [0.25, 0.5], "shared_decisions": True},
    },
}


def tiny_pipeline() -> MiniDiTPipeline:
    """A random 5-block class-conditional DiT on 16×16 digits (4 cacheable blocks after the probe)."""
    pipe = tiny_digits_pipeline(num_layers=NUM_LAYERS, attention_head_dim=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings() -> Settings:
    return Settings((7, 8, 9), (1000000, 1000001, 1000002), STEPS, 4.0, warmup_steps=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small models run fastest on one thread, and do not stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(folder: Path) -> tuple[dict[str, Any], Path]:
    """``benchmark.py`` end to end with a tiny config and a learned (static schedule) policy; W&B disabled."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "benchmark.yaml"
    config_path.write_text(yaml.safe_dump(TINY_CONFIG))
    table = torch.ones(STEPS, 4, dtype=torch.int64)  # reuse everything but the first step
    table[0] = 0
    policy = export_schedule(folder / "policy.safetensors", table)
    out = folder / "out"
    argv = [
        *("--config", str(config_path), "--policy", str(policy), "--steps", str(STEPS), "--seeds", SEEDS),
        *("--classes", "7,8,9", "--out", str(out), "--wandb-mode", "disabled", "--no-progress"),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "load_model", lambda model, scheduler, **options: tiny_pipeline())
        patch.setattr(cli, "keep_freed_memory", lambda: True)  # the real call is tested in a subprocess below
        results = cli.main(argv)
    return results, out


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    return run_cli(tmp_path_factory.mktemp("benchmark"))


def rows_of(results: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [row for row in results["rows"] if row["method"] == method]


def test_writes_the_three_files_with_the_schema(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    results, out = benchmark_run
    for name in ("results.json", "results.md", "pareto.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    written = json.loads((out / "results.json").read_text())
    assert TOP_KEYS <= set(written)
    assert written["steps"] == STEPS and written["n_samples"] == 4
    assert written["seeds"] == [1000000, 1000001, 1000002, 1000003] and written["classes"] == [7, 8, 9]
    assert written["scheduler"] == "DDIMScheduler"
    assert written["freed_memory_kept"] is True
    families = set()
    for row in written["rows"]:
        assert ROW_KEYS <= set(row), row
        assert row["family"] in ("learned", "baseline", "diffusers")
        families.add(row["family"])
        for key in ("flops_speedup", "wall_speedup", "psnr", "ssim", "class_acc", "fd"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["method"], key)
    assert families == {"learned", "baseline", "diffusers"}
    assert [entry["target_speedup"] for entry in written["summary"]] == [2.0, 3.0, 4.0, 5.0]
    for row in written["rows"]:  # one ratio per timing round, their median the wall speedup
        assert len(row["wall_speedups"]) == written["repeats"]
        assert row["wall_speedup"] == pytest.approx(sorted(row["wall_speedups"])[len(row["wall_speedups"]) // 2])
    text = (out / "results.md").read_text()
    assert "| family | method | knob |" in text and "60 dB" in text
    assert "## Wall-clock against FLOP speedup" in text
    for entry in written["summary"]:
        assert entry["line"] in text


def test_always_compute_is_the_reference(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    (row,) = rows_of(benchmark_run[0], "AlwaysCompute")
    assert row["flops_speedup"] == pytest.approx(1.0)
    assert row["psnr"] == 60.0 and row["ssim"] == pytest.approx(1.0)


def test_fora_and_learned_rows_save_flops(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    fora = rows_of(benchmark_run[0], "FORA")
    assert [row["knob"] for row in fora] == ["N=2", "N=3"]
    assert all(row["flops_speedup"] > 1.2 and row["flops_source"] == "engine" for row in fora)
    assert fora[1]["flops_speedup"] > fora[0]["flops_speedup"]
    learned = rows_of(benchmark_run[0], "CachePilot (learned)")
    assert [row["knob"] for row in learned] == ["budget=0.25", "budget=0.5"]
    assert all(row["family"] == "learned" and row["flops_speedup"] > 1.5 for row in learned)
    shared = rows_of(benchmark_run[0], "CachePilot (learned, shared)")  # a static schedule: the samples agree
    assert [row["knob"] for row in shared] == ["budget=0.25", "budget=0.5"]
    assert [row["flops_speedup"] for row in shared] == pytest.approx([row["flops_speedup"] for row in learned])


def test_diffusers_rows_have_plausible_flop_counts(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    results = benchmark_run[0]
    for method in ("diffusers FirstBlockCache", "diffusers TaylorSeer", "diffusers MagCache"):
        rows = rows_of(results, method)
        assert rows, method
        for row in rows:
            assert row["family"] == "diffusers" and row["flops_source"] == "FlopCounterMode"
            assert row["hooked_modules"] > 0
            # At least block 0 and the embeddings run at every step, so fewer than NUM_LAYERS times less work.
            assert 1.0 - 1e-9 <= row["flops_speedup"] < NUM_LAYERS, row
    strict, loose = rows_of(results, "diffusers FirstBlockCache")
    assert loose["flops_speedup"] > strict["flops_speedup"]
    assert loose["flops_speedup"] > 2.0  # threshold 10: only the first step runs the remaining blocks
    for row in rows_of(results, "diffusers TaylorSeer"):
        assert row["hooked_modules"] == 2 * NUM_LAYERS  # attn1 and ff of every block
        assert row["flops_speedup"] > 1.2  # interval 2: every other step after the first is forecast


def test_flop_counter_agrees_with_engine_counters(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    pipe, run = tiny_pipeline(), settings()
    reference = uncached_reference(pipe, run)
    method = EngineMethod("FORA", "baseline", "N=3", lambda: FORA(3), EngineOptions(groups=4, probe_blocks=1))
    check = flops_cross_check(pipe, method, run, reference)
    assert check["engine"] > 1.5
    assert check["relative_difference"] < 0.03, check
    assert benchmark_run[0]["flops_check"]["passed"]
    assert not hasattr(pipe.transformer, "_diffusers_hook")


def test_diffusers_hooks_are_removed_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe, run = tiny_pipeline(), settings()
    uncached = run.run(pipe)
    grid = load_config(overrides={"methods": {"diffusers_magcache": {"calibration_seed": 3}}}).methods
    calibration = MagCacheCalibration(grid.diffusers_magcache, default_class=7)
    methods = [
        DiffusersFirstBlockCache(0.5),
        DiffusersTaylorSeer(2, 2, 1, "float32"),
        DiffusersMagCache(1.0, 2, grid.diffusers_magcache, calibration),
    ]
    for method in methods:
        method.prepare(pipe, run)
        method.attach(pipe, run)
        outputs = []
        for _ in range(2):
            with method.generation():
                outputs.append(run.run(pipe))
        method.detach(pipe)
        assert torch.equal(outputs[0], outputs[1]), f"{method}: state leaked between generations"
        assert not any(hasattr(m, "_diffusers_hook") for m in pipe.transformer.modules()), method
        assert torch.equal(run.run(pipe), uncached), f"{method}: the transformer changed after removal"
    assert len(calibration.ratios) == STEPS

    monkeypatch.setattr("bench.diffusers_caches.taylorseer_identifiers", lambda t: ["no_such_module"])
    with pytest.raises(RuntimeError, match="hooked no module"):
        DiffusersTaylorSeer(2, 1, 1, "float32").attach(pipe, run)
    assert not any(hasattr(m, "_diffusers_hook") for m in pipe.transformer.modules())


def test_summary_interpolates_each_method_front() -> None:
    rows = [
        {"method": "learned", "family": "learned", "flops_speedup": 2.0, "psnr": 30.0},
        {"method": "learned", "family": "learned", "flops_speedup": 4.0, "psnr": 26.0},
        {"method": "FORA", "family": "baseline", "flops_speedup": 1.5, "psnr": 35.0},
        {"method": "FORA", "family": "baseline", "flops_speedup": 2.5, "psnr": 28.0},  # dominated by 3.0×
        {"method": "FORA", "family": "baseline", "flops_speedup": 3.0, "psnr": 29.0},
        {"method": "TS", "family": "diffusers", "flops_speedup": 2.0, "psnr": 31.0},
        {"method": "TS", "family": "diffusers", "flops_speedup": 5.0, "psnr": 20.0},
    ]
    assert pareto_front([(1.5, 35.0), (2.5, 28.0), (3.0, 29.0)]) == [(1.5, 35.0), (3.0, 29.0)]
    assert psnr_at([(2.5, 28.0)], 2.0) == 28.0  # a faster setting also covers a slower target
    assert psnr_at([(2.5, 28.0)], 3.0) is None

    summary = summarize(rows, [2, 3, 4, 5])
    expected = [  # (learned, best, best method, delta)
        (30.0, 33.0, "FORA", -3.0),
        (28.0, 29.0, "FORA", -1.0),
        (26.0, 31.0 - 22.0 / 3.0, "TS", 26.0 - (31.0 - 22.0 / 3.0)),
        (None, 20.0, "TS", None),
    ]
    for entry, (learned, best, method, delta) in zip(summary, expected, strict=True):
        assert entry["learned_psnr"] == (None if learned is None else pytest.approx(learned))
        assert entry["best_psnr"] == pytest.approx(best) and entry["best_method"] == method
        assert entry["delta_psnr"] == (None if delta is None else pytest.approx(delta))
    assert summary[2]["per_method"]["FORA"] is None
    assert "+2.33 dB" in summary[2]["line"] and "n/a" in summary[3]["line"]
    assert "no learned policy" in summarize(rows[2:], [2])[0]["line"]


def test_wall_ratio_at_targets_interpolates_between_learned_knobs() -> None:
    def row(method: str, flops: float, wall: float, rounds: list[float]) -> dict[str, Any]:
        family = "learned" if method.startswith("learned") else "baseline"
        return {
            "method": method,
            "family": family,
            "knob": f"{flops:g}",
            "flops_speedup": flops,
            "psnr": 30.0,
            "wall_speedup": wall,
            "wall_speedups": rounds,
            "ssim": 1.0,
            "class_acc": 1.0,
            "fd": None,
        }

    rows = [
        row("learned", 4.0, 3.2, [3.0, 3.2, 3.6]),  # 0.80
        row("learned", 2.0, 1.8, [1.8, 1.9, 1.7]),  # 0.90
        row("learned shared", 3.0, 3.0, [3.0, 3.0, 3.0]),  # 1.00
        row("AlwaysCompute", 1.0, 1.02, [0.98, 1.02, 1.05]),
        row("FORA", 3.0, 2.0, [2.0, 2.0, 2.0]),
    ]
    learned = [r for r in rows if r["method"] == "learned"]
    assert wall_ratio_at(learned, 3.0) == pytest.approx(0.85)
    assert wall_ratio_at(learned, 2.0) == pytest.approx(0.9) and wall_ratio_at(learned, 4.0) == pytest.approx(0.8)
    assert wall_ratio_at(learned, 1.5) is None and wall_ratio_at(learned, 4.5) is None
    saturated = [row("learned", 2.0, 1.6, [1.6]), row("learned", 2.0, 1.8, [1.8])]  # two budgets, one speedup
    assert wall_ratio_at(saturated, 2.0) == pytest.approx(0.85)
    assert wall_ratio_at([*saturated, row("learned", 3.0, 2.1, [2.1])], 2.0) == pytest.approx(0.85)

    summary = summarize(rows, [2, 3, 5])
    assert summary[1]["learned_wall_ratio"] == {"learned": pytest.approx(0.85), "learned shared": pytest.approx(1.0)}
    assert summary[1]["line"].endswith("learned wall ÷ FLOP speedup 0.85")
    assert "wall ÷ FLOP" not in summary[2]["line"]  # 5× lies past the learned knobs

    # With two learned variants, a line gives the wall ratio of the one whose PSNR it gives.
    variants = [
        {**row("learned", 2.0, 1.0, [1.0]), "psnr": 30.0},
        {**row("learned", 4.0, 2.0, [2.0]), "psnr": 26.0},
        {**row("learned shared", 2.0, 2.0, [2.0]), "psnr": 35.0},
        {**row("learned shared", 4.0, 4.0, [4.0]), "psnr": 33.0},
        {**row("FORA", 3.0, 3.0, [3.0]), "psnr": 30.0},
    ]
    (entry,) = summarize(variants, [3])
    assert entry["learned_method"] == "learned shared" and entry["learned_psnr"] == pytest.approx(34.0)
    assert entry["line"].endswith("learned wall ÷ FLOP speedup 1.00")

    results = {
        "model": "m",
        "scheduler": "s",
        "steps": 4,
        "guidance": 2.0,
        "threads": 1,
        "n_samples": 1,
        "seeds": [0],
        "classes": [0],
        "psnr_cap": 60.0,
        "repeats": 3,
        "methods_per_uncached_run": 3,
        "rows": rows,
        "summary": summary,
    }
    assert "(each round: uncached, 3 method runs, uncached, ...;" in markdown(results)
    section = markdown(results).split("## Wall-clock against FLOP speedup")[1].split("## Results")[0]
    assert "| learned | 4 | 4.00 | 3.20 | 0.80 | 0.75, 0.80, 0.90 |" in section
    assert "| AlwaysCompute | 1 | 1.00 | 1.02 | 1.02 | 0.98, 1.02, 1.05 |" in section
    assert "FORA" not in section


def test_wandb_logs_table_image_and_artifact(benchmark_run: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    results, out = benchmark_run
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "pareto.png"}
    cli.log_to_wandb(results, paths, "offline", "cachepilot-tests", tmp_path)
    deadline = time.monotonic() + 20.0
    logged = read_offline_run(tmp_path / "wandb")
    while not logged.history_keys and time.monotonic() < deadline:  # wandb-core may still be writing the file
        time.sleep(0.2)
        logged = read_offline_run(tmp_path / "wandb")
    for key in ("benchmark/results", "benchmark/pareto"):  # logged as media: keys such as benchmark/pareto/path
        assert any(k.startswith(key) for k in logged.history_keys), key
    assert any(kind == "benchmark" for _, kind in logged.artifacts)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--budgets", "0.2,abc"),
        ("--budgets", "0.5,1.5"),
        ("--seeds", "9-3"),
        ("--seeds", "1000000..1000010"),
        ("--config", "missing.yaml"),
        ("--classes", "3,12"),
        ("--repeats", "0"),
        ("--guidance", "-1"),
        ("--scheduler", "pndm"),
    ],
)
def test_bad_flag_names_the_flag(flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as error:
        cli.main([flag, value, "--wandb-mode", "disabled"])
    assert error.value.code == 2
    message = capsys.readouterr().err
    assert flag in message and value in message


def test_bad_output_folder_or_policy_file_stops_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    taken = tmp_path / "results"
    taken.write_text("kept")
    with pytest.raises(SystemExit) as error:
        cli.main(["--out", str(taken), "--wandb-mode", "disabled"])
    assert error.value.code == 2 and f"{taken} is a file, not a folder" in capsys.readouterr().err
    assert taken.read_text() == "kept"
    weights = REPO / "assets" / "models" / "mini-dit-digits" / "transformer" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(SystemExit) as error:
        cli.main(["--policy", str(weights), "--out", str(tmp_path / "out"), "--wandb-mode", "disabled"])
    assert error.value.code == 2 and "without a CachePilot manifest" in capsys.readouterr().err


def test_steps_other_than_the_policys_training_get_a_notice() -> None:
    policy = load_policy(REPO / "assets" / "policies" / "mini-dit-digits.safetensors")
    low, high = policy.manifest["trained_on"]["num_inference_steps"]  # the shipped policy serves a range
    assert trained_steps_notice(policy, low) is None and trained_steps_notice(policy, high) is None
    assert f"trained with {low} to {high} denoising steps and this run uses 4" in trained_steps_notice(policy, 4)
    assert trained_steps_notice(FORA(2), 4) is None  # no manifest: nothing to compare with


def test_config_file_mistakes_name_the_field(tmp_path: Path) -> None:
    def config_file(text: str) -> Path:
        path = tmp_path / "benchmark.yaml"
        path.write_text(text)
        return path

    assert load_config(config_file("seeds: 1000005\n")).seed_list == [1000005]  # one seed, as --seeds takes it
    with pytest.raises(ConfigError, match="quick must be a mapping"):
        load_config(config_file("quick: true\n"))
    with pytest.raises(ConfigError, match="--quick: .* has no quick: section"):
        load_config(config_file("repeats: 2\n"), quick=True)
    for target in (".nan", ".inf", "1.0"):
        with pytest.raises(ConfigError, match="targets="):
            load_config(config_file(f"targets: [2, {target}]\n"))


def test_flags_override_the_config() -> None:
    parser = cli.build_parser()
    flags = ["--quick", "--repeats", "5", "--threads", "2", "--budgets", "0.25,0.5", "--scheduler", "dpmsolver++"]
    config = load_config(quick=True, overrides=cli.overrides_from_args(parser.parse_args(flags), parser))
    assert (config.repeats, config.threads, config.methods.learned.budgets) == (5, 2, [0.25, 0.5])
    assert config.scheduler == "dpmsolver++" and load_config().scheduler == "default"
    assert load_config().oracle.samples > 0
    no_oracle = cli.overrides_from_args(parser.parse_args(["--no-oracle"]), parser)
    assert load_config(overrides=no_oracle).oracle.samples == 0
    assert load_config(quick=True).repeats == 2 and load_config().repeats == 3


def test_quick_config_keeps_every_method_and_default_policy_notice() -> None:
    quick, full = load_config(quick=True), load_config()
    assert quick.classes == [7, 8, 9] and quick.seed_list[0] == 1_000_000
    assert len(quick.seed_list) < len(full.seed_list)
    for name in ("fora", "first_block", "teacache", "diffusers_first_block", "diffusers_magcache"):
        grid = getattr(quick.methods, name)
        assert getattr(grid, "intervals", None) or getattr(grid, "thresholds", None), name
    assert quick.methods.taylorseer.intervals and quick.methods.delta_dit.intervals
    assert quick.methods.diffusers_taylorseer.intervals and quick.methods.learned.budgets

    assert any(
        "classes [8, 9] are not drawn" in note for note in cli.data_notices(load_config(overrides={"seeds": "5-5"}))
    )
    with pytest.raises(ConfigError, match="guidance=nan"):
        load_config(overrides={"guidance": float("nan")})

    path, notice = cli.resolve_policy(load_config(overrides={"model": "no-such-model"}))
    assert path is None and "learned rows are skipped" in notice
    with pytest.raises(FileNotFoundError, match="--policy"):
        cli.resolve_policy(load_config(overrides={"methods": {"learned": {"policy": "missing.safetensors"}}}))


def test_benchmark_samples_as_the_policy_is_trained() -> None:
    """The benchmark's steps and guidance lie in what the training config covers, or the learned rows are
    off-distribution."""
    training = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["env"]
    benchmark = load_config()
    assert benchmark.model == training["model"]
    low, high = training["num_inference_steps"]
    assert low <= benchmark.steps <= high
    assert benchmark.guidance == training["guidance_scale"]
    assert not set(benchmark.classes) & set(training["train_classes"])
    assert benchmark.seed_list[0] >= training["train_seeds"][1]


def test_same_seeds_and_config_give_identical_quality(
    benchmark_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    again, _ = run_cli(tmp_path / "again")
    first = {(row["method"], row["knob"]): row for row in benchmark_run[0]["rows"]}
    second = {(row["method"], row["knob"]): row for row in again["rows"]}
    assert first.keys() == second.keys()
    for key, row in first.items():
        for field in ("psnr", "ssim", "class_acc", "fd", "flops_speedup"):
            assert second[key][field] == row[field], (key, field)


class _Broken(EngineMethod):
    """A method that hooks the model and then raises, as a cache with a bug for this architecture would."""

    def attach(self, pipe: Any, settings: Settings) -> None:
        super().attach(pipe, settings)
        raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'Tensor'")


def test_a_failing_method_is_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    from bench.report import write_results
    from bench.runner import run_benchmark

    config = load_config(
        overrides={"seeds": "1000000-1000001", "steps": STEPS, "repeats": 1, "warmup_steps": 1, "flops_check": False}
    )
    methods = [
        _Broken("Broken cache", "diffusers", "threshold=0.1", lambda: FORA(2)),
        EngineMethod("FORA", "baseline", "N=2", lambda: FORA(2), EngineOptions(groups=2, probe_blocks=0)),
    ]
    lines: list[str] = []
    pipe = tiny_pipeline()
    results = run_benchmark(pipe, config, methods, model_name="tiny", progress=False, echo=lines.append)
    assert runtime.get_engine(pipe.transformer) is None  # the failed method's hooks went with it
    assert [row["method"] for row in results["rows"]] == ["FORA"]
    assert results["failures"] == [
        {
            "method": "Broken cache",
            "family": "diffusers",
            "knob": "threshold=0.1",
            "error": "TypeError: unsupported operand type(s) for -: 'NoneType' and 'Tensor'",
        }
    ]
    assert any("Broken cache" in line and "FAILED" in line for line in lines)
    paths = write_results(results, tmp_path)
    assert "## Failed" in Path(paths["md"]).read_text()


def test_the_flop_cross_check_picks_a_measured_method_and_its_failure_keeps_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench import runner
    from bench.report import write_results

    config = load_config(overrides={"seeds": "1000000-1000001", "steps": STEPS, "repeats": 1, "warmup_steps": 1})
    options = EngineOptions(groups=2, probe_blocks=0)
    methods = [
        _Broken("FORA", "baseline", "N=2", lambda: FORA(2), options),
        EngineMethod("FORA", "baseline", "N=3", lambda: FORA(3), options),
    ]
    results = runner.run_benchmark(tiny_pipeline(), config, methods, model_name="tiny", progress=False, echo=print)
    assert [row["knob"] for row in results["rows"]] == ["N=3"]
    assert results["flops_check"]["knob"] == "N=3" and results["flops_check"]["passed"]

    def broken_check(*args: Any) -> None:
        raise RuntimeError("counter broke")

    monkeypatch.setattr(runner, "flops_cross_check", broken_check)
    lines: list[str] = []
    results = runner.run_benchmark(
        tiny_pipeline(), config, methods[1:], model_name="t", progress=False, echo=lines.append
    )
    assert [row["knob"] for row in results["rows"]] == ["N=3"]
    assert results["flops_check"] == {
        "method": "FORA",
        "knob": "N=3",
        "passed": False,
        "error": "RuntimeError: counter broke",
    }
    assert any("cross-check of FORA (N=3) failed" in line for line in lines)
    paths = write_results(results, tmp_path)
    assert "FLOP cross-check on FORA (N=3) failed: RuntimeError: counter broke" in paths["md"].read_text()


def test_results_json_is_strict_json() -> None:
    from bench.report import strict_json

    value = {"ssim": math.nan, "rows": [{"fd": math.inf, "psnr": 31.5}], "knob": "N=2", "n": 3}
    text = json.dumps(strict_json(value), allow_nan=False)
    assert json.loads(text) == {"ssim": None, "rows": [{"fd": None, "psnr": 31.5}], "knob": "N=2", "n": 3}


def test_keep_freed_memory_sets_glibc_thresholds() -> None:
    """Run in a child process: the allocator setting is process-wide and must not leak into the test run."""
    code = "from runtime.allocator import keep_freed_memory; print(keep_freed_memory())"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert printed.strip() == str(on_glibc)


class _ScriptedMethod(Method):
    """A method whose attach and detach only mark the pipeline, for timing rounds without a model."""

    counts_own_flops = True

    def __init__(self, name: str) -> None:
        self.name, self.family, self.knob = name, "baseline", "-"

    def attach(self, pipe: Any, settings: Settings) -> None:
        pipe.attached = self.name

    def detach(self, pipe: Any) -> None:
        pipe.attached = None

    def flops_speedup(self) -> float | None:
        return 2.0


def _measure_scripted(
    monkeypatch: pytest.MonkeyPatch,
    scripted: Any,
    names: str,
    repeats: int,
    on_failure: Any = print,
) -> tuple[list[dict[str, Any]], Any]:
    """Runs ``measure_all`` over scripted methods named by the letters of ``names``, timed by ``scripted``.

    ``scripted(name)`` gives the seconds of one run of the method ``name`` ("U": the uncached pipeline) or raises.
    """
    from bench import runner

    pipe = type("Pipe", (), {"attached": None})()

    def timed(pipe_: Any, settings: Settings) -> tuple[torch.Tensor, float]:
        return torch.zeros(2, 1, 16, 16), scripted(pipe_.attached or "U")

    monkeypatch.setattr(runner, "_timed", timed)
    monkeypatch.setattr(runner, "prepare_method", lambda p, method, s, r: runner._Timing(method))
    reference = runner.Reference(images=torch.zeros(2, 1, 16, 16), flops=1)
    settings = Settings((0, 1), (0, 1), 2, 1.0)
    rows = runner.measure_all(
        pipe, [_ScriptedMethod(n) for n in names], settings, reference, repeats, 60.0, on_failure
    )
    return rows, pipe


def test_timing_rounds_bracket_each_method_run_with_uncached_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = {
        "U": [4.0, 6.0, 8.0, 5.0, 7.0, 9.0],
        "a": [1.0, 2.0],
        "b": [2.0, 3.0],
        "c": [1.5, 1.0],
        "d": [2.5, 0.5],
    }
    calls: list[str] = []

    def scripted(name: str) -> float:
        calls.append(name)
        return seconds[name].pop(0)

    rows, _ = _measure_scripted(monkeypatch, scripted, "abcd", 2)

    # three method runs between two uncached runs; the second round runs the methods in reverse order
    from bench.runner import METHODS_PER_UNCACHED_RUN

    assert METHODS_PER_UNCACHED_RUN == 3
    assert calls == ["U", "a", "b", "c", "U", "d", "U", "U", "d", "c", "b", "U", "a", "U"]
    ratios = {row["method"]: row["wall_speedup"] for row in rows}
    assert ratios["a"] == pytest.approx(((4 + 6) / 2 / 1 + (7 + 9) / 2 / 2) / 2)
    assert ratios["b"] == pytest.approx(((4 + 6) / 2 / 2 + (5 + 7) / 2 / 3) / 2)
    assert ratios["c"] == pytest.approx(((4 + 6) / 2 / 1.5 + (5 + 7) / 2 / 1) / 2)
    assert ratios["d"] == pytest.approx(((6 + 8) / 2 / 2.5 + (5 + 7) / 2 / 0.5) / 2)
    assert [row["flops_speedup"] for row in rows] == [2.0, 2.0, 2.0, 2.0]


def test_a_method_failing_in_a_later_round_loses_only_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {"U": 0, "a": 0, "b": 0}

    def scripted(name: str) -> float:
        runs[name] += 1
        if name == "b" and runs["b"] == 2:
            raise RuntimeError("cache broke in round 2")
        return 4.0 if name == "U" else 2.0

    failures: list[tuple[str, str]] = []
    rows, pipe = _measure_scripted(
        monkeypatch, scripted, "ab", 3, lambda method, error: failures.append((method.name, str(error)))
    )
    assert failures == [("b", "cache broke in round 2")]
    assert [row["method"] for row in rows] == ["a"]
    assert rows[0]["wall_speedup"] == pytest.approx(2.0)
    assert runs == {"U": 6, "a": 3, "b": 2}  # round 3 times only "a", still between two uncached runs
    assert pipe.attached is None


REPLAY = "CachePilot (learned, static replay)"


def test_static_replay_rows_play_the_learned_policys_own_schedule(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    results = benchmark_run[0]
    learned = rows_of(results, "CachePilot (learned)")
    replay = rows_of(results, REPLAY)
    assert [row["knob"] for row in replay] == [row["knob"] for row in learned] == ["budget=0.25", "budget=0.5"]
    assert [row["flops_speedup"] for row in replay] == pytest.approx([row["flops_speedup"] for row in learned])
    for mine, its in zip(learned, replay, strict=True):
        # The policy is a static table: its samples agree, so the replay is the policy, sample by sample.
        assert mine["disagreement"] == its["disagreement"] == 0.0
        assert its["family"] == "learned" and its["replay_of"] == "CachePilot (learned)"
        assert its["psnr_per_sample"] == mine["psnr_per_sample"]
        assert its["wall_speedup"] > 0 and len(its["wall_speedups"]) == results["repeats"]
    for entry in results["summary"]:  # the replay is neither the learned line's policy nor its best non-learned
        assert REPLAY not in (entry["learned_method"], entry["best_method"])


def test_every_row_keeps_per_sample_psnr(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    results = benchmark_run[0]
    for row in results["rows"]:
        values = row["psnr_per_sample"]
        assert len(values) == results["n_samples"], row["method"]
        assert row["psnr"] == pytest.approx(sum(values) / len(values))
        assert min(values) - 1e-9 <= row["psnr_p10"] <= row["psnr"] + 1e-9, row["method"]
    fora = rows_of(results, "FORA")[-1]
    assert fora["psnr_p10"] < fora["psnr"]  # a cache that errs differs between samples: the tail lies below the mean


def test_adaptivity_lines_compare_learned_with_its_replay(benchmark_run: tuple[dict[str, Any], Path]) -> None:
    from bench.adaptivity import adaptivity_summary

    results, out = benchmark_run
    entries = results["adaptivity"]
    assert [entry["target_speedup"] for entry in entries] == [2.0, 3.0, 4.0, 5.0]
    reached = [entry for entry in entries if entry["learned_psnr"] is not None]
    assert reached, "the learned knobs reach at least one target"
    for entry in reached:
        assert entry["minus_replay"] == pytest.approx(0.0) and entry["minus_replay_p10"] == pytest.approx(0.0)
        assert entry["minus_best"] == pytest.approx(entry["learned_psnr"] - entry["best_psnr"])
        assert entry["best_method"] not in ("CachePilot (learned)", REPLAY)
        assert entry["learned_psnr_p10"] <= entry["learned_psnr"] + 1e-9
        assert "learned − static replay = +0.00 dB mean, +0.00 dB p10" in entry["line"]
    for entry in entries:  # read between the learned knobs (this policy's all reach the same speedup), else n/a
        if entry["disagreement"] is None:
            assert "samples disagree on n/a of cells" in entry["line"] and "learned n/a, replay n/a" in entry["line"]
            continue
        assert entry["disagreement"] == 0.0 and "samples disagree on 0.0% of cells" in entry["line"]
        assert entry["wall_ratio_vs_replay"] == pytest.approx(entry["learned_wall_ratio"] / entry["replay_wall_ratio"])
    learned_rows = rows_of(results, "CachePilot (learned)")
    at_knob = adaptivity_summary(results["rows"], [learned_rows[0]["flops_speedup"]])[0]
    assert at_knob["disagreement"] == 0.0 and at_knob["wall_ratio_vs_replay"] == pytest.approx(
        at_knob["learned_wall_ratio"] / at_knob["replay_wall_ratio"]
    )
    assert f"learned ÷ replay {at_knob['wall_ratio_vs_replay']:.2f}" in at_knob["line"]
    assert all(entry["oracle_samples"] is None and "oracle" not in entry["line"] for entry in entries)
    assert not [row for row in results["rows"] if row["family"] == "oracle"]
    text = (out / "results.md").read_text()
    assert "## Learned vs its static replay" in text and "| replay PSNR | replay p10 |" in text
    for entry in entries:
        assert entry["line"] in text
    written = json.loads((out / "results.json").read_text())
    assert [entry["line"] for entry in written["adaptivity"]] == [entry["line"] for entry in entries]


def _row(method: str, family: str, flops: float, per_sample: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "family": family,
        "knob": f"{flops:g}",
        "flops_speedup": flops,
        "psnr": sum(per_sample) / len(per_sample),
        "psnr_p10": float(np.percentile(per_sample, 10)),
        "psnr_per_sample": per_sample,
        **extra,
    }


def test_adaptivity_summary_reads_each_front_and_excludes_replay_and_oracle() -> None:
    from bench.adaptivity import adaptivity_summary, tenth_percentile

    assert tenth_percentile([10.0, 20.0, 30.0]) == pytest.approx(12.0)
    learned = "learned"
    rows = [
        _row(learned, "learned", 2.0, [40.0, 34.0, 30.0, 28.0], disagreement=0.2, wall_speedup=1.8),
        _row(learned, "learned", 4.0, [30.0, 28.0, 26.0, 24.0], disagreement=0.4, wall_speedup=3.2),
        _row("replay", "learned", 2.0, [38.0, 29.0, 19.0, 6.0], replay_of=learned, disagreement=0.2, wall_speedup=2.0),
        _row("replay", "learned", 4.0, [28.0, 25.0, 22.0, 9.0], replay_of=learned, disagreement=0.4, wall_speedup=4.0),
        _row("FORA", "baseline", 2.0, [50.0, 20.0, 20.0, 10.0], wall_speedup=1.9),
        _row("FORA", "baseline", 4.0, [20.0, 20.0, 20.0, 20.0], wall_speedup=3.9),
        _row("oracle", "oracle", 2.0, [45.0, 35.0], samples=2, causal=False, wall_speedup=None),
        _row("oracle", "oracle", 4.0, [60.0, 60.0], samples=2, causal=False, wall_speedup=None),
    ]
    summary = {entry["target_speedup"]: entry for entry in adaptivity_summary(rows, [3.0, 5.0])}
    at3 = summary[3.0]
    assert (at3["learned_method"], at3["replay_method"]) == (learned, "replay")
    assert at3["learned_psnr"] == pytest.approx((33.0 + 27.0) / 2)
    assert at3["minus_replay"] == pytest.approx(30.0 - (23.0 + 21.0) / 2)
    p10 = {m: [(r["flops_speedup"], r["psnr_p10"]) for r in rows if r["method"] == m] for m in (learned, "replay")}
    assert at3["minus_replay_p10"] == pytest.approx(psnr_at(p10[learned], 3.0) - psnr_at(p10["replay"], 3.0))
    assert at3["learned_psnr_p10"] == pytest.approx((28.6 + 24.6) / 2)  # numpy's percentile: 28 + 0.3 × 2
    # FORA is the best non-learned in the mean; the oracle (60 dB at 4×) and the replay are not candidates.
    assert at3["best_method"] == "FORA" and at3["minus_best"] == pytest.approx(30.0 - 22.5)
    assert at3["minus_best_p10"] == pytest.approx(at3["learned_psnr_p10"] - at3["best_psnr_p10"])
    assert at3["disagreement"] == pytest.approx(0.3)
    assert at3["learned_wall_ratio"] == pytest.approx((0.9 + 0.8) / 2)
    assert at3["replay_wall_ratio"] == pytest.approx(1.0)
    assert at3["wall_ratio_vs_replay"] == pytest.approx(0.85)
    # The oracle against the learned policy on the oracle's two samples.
    assert at3["oracle_samples"] == 2 and at3["oracle_psnr"] == pytest.approx(60.0)
    assert at3["oracle_learned_psnr"] == pytest.approx(((40.0 + 34.0) / 2 + (30.0 + 28.0) / 2) / 2)
    assert at3["oracle_psnr_p10"] <= at3["oracle_psnr"]
    assert at3["line"].startswith("3×: learned − static replay = +8.00 dB mean, ")
    assert "learned − best non-learned = +7.50 dB mean (FORA)" in at3["line"]
    assert "samples disagree on 30.0% of cells" in at3["line"]
    assert "wall ÷ FLOP speedup learned 0.85, replay 1.00 (learned ÷ replay 0.85)" in at3["line"]
    assert "per-sample oracle (not causal, 2 samples) 60.00 dB mean" in at3["line"]
    assert "vs learned 33.00 dB" in at3["line"]
    at5 = summary[5.0]  # past every knob
    assert at5["learned_psnr"] is None and at5["minus_replay"] is None and at5["disagreement"] is None
    assert "learned − static replay = n/a mean" in at5["line"]
    assert adaptivity_summary([r for r in rows if "replay_of" not in r], [3.0]) == []  # no replay: no lines


def test_oracle_rows_only_when_configured(tmp_path: Path) -> None:
    from bench.grid import build_methods
    from bench.oracle import build_upper_bounds
    from bench.report import write_results
    from bench.runner import run_benchmark
    from envs.pipelines import generate
    from policies import StaticSchedulePolicy
    from reporting.schedule_search import ScheduleSearch

    table = torch.ones(STEPS, 4, dtype=torch.int64)
    table[0] = 0
    policy = load_policy(export_schedule(tmp_path / "policy.safetensors", table))
    assert build_upper_bounds(load_config(quick=True), policy) == []  # --quick: no oracle
    assert build_upper_bounds(load_config(), None) == []  # nothing to bound
    assert len(build_upper_bounds(load_config(), policy)) == 1  # the full run's config has one
    with pytest.raises(ConfigError, match="oracle.samples=-1"):
        load_config(overrides={"oracle": {"samples": -1}})

    only = {"always_compute": False, "first_block": {"thresholds": []}, "teacache": {"thresholds": []}}
    grids = {"taylorseer": {"intervals": []}, "delta_dit": {"intervals": []}, "fora": {"intervals": [2]}}
    off = {"diffusers_first_block": {"thresholds": []}, "diffusers_taylorseer": {"intervals": []}}
    methods = {**only, **grids, **off, "diffusers_magcache": {"thresholds": []}, "learned": {"budgets": [0.5]}}
    overrides = {"seeds": "1000000-1000002", "steps": STEPS, "repeats": 1, "warmup_steps": 1, "flops_check": False}
    oracle_config = {"samples": 2, "sweeps": 1, "budgets": None, "workers": 1}  # the learned budgets, in this process
    config = load_config(overrides={**overrides, "targets": [1.5], "methods": methods, "oracle": oracle_config})
    pipe = tiny_pipeline()
    bounds = build_upper_bounds(config, policy)
    results = run_benchmark(
        pipe, config, build_methods(config, policy), model_name="tiny", progress=False, echo=print, upper_bounds=bounds
    )
    assert runtime.get_engine(pipe.transformer) is None
    (oracle,) = [row for row in results["rows"] if row["family"] == "oracle"]
    assert (oracle["knob"], oracle["causal"], oracle["samples"], oracle["wall_speedup"]) == (
        "budget=0.5",
        False,
        2,
        None,
    )
    assert len(oracle["psnr_per_sample"]) == 2 and oracle["psnr_p10"] <= oracle["psnr"]
    assert oracle["psnr"] == pytest.approx(oracle["search_psnr"], abs=1e-3)  # the engine plays what was searched

    # Its FLOPs are those of the shared schedule the search starts from (moves keep the cells per group).
    samples = ([7, 8], [1000000, 1000001])
    search = ScheduleSearch(pipe, *samples, STEPS, config.guidance, policy.trained_options)
    start = StaticSchedulePolicy(search.evenly_spaced(0.5), engine_options=policy.engine_options)
    engine = runtime.enable_cache(pipe.transformer, start)
    try:
        with torch.inference_mode():
            generate(pipe, *samples, STEPS, config.guidance)
        assert oracle["flops_speedup"] == pytest.approx(engine.summary()["flops_speedup"], rel=1e-6)
    finally:
        runtime.disable_cache(pipe.transformer)
    (entry,) = results["adaptivity"]
    assert entry["oracle_psnr"] == pytest.approx(oracle["psnr"])  # below its one knob's speedup: that knob's PSNR
    assert entry["oracle_samples"] == 2 and "per-sample oracle (not causal, 2 samples)" in entry["line"]
    assert entry["best_method"] == "FORA"  # neither the oracle nor the replay
    paths = write_results(results, tmp_path / "out")
    assert "per-sample oracle (not causal)" in paths["md"].read_text() and paths["png"].stat().st_size > 0

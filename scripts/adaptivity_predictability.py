"""Can a causal policy tell, per sample, which change to a shared schedule helps? A test of the observations.

A per-sample oracle schedule beats the best shared one by several dB (``scripts/adaptivity_headroom.py``). A policy
can only take that gain if what it observes while sampling predicts, for each sample, which decisions to change.
This script measures that directly, on training samples, for each budget:

1. ``S``: a shared schedule searched on ``--search-samples`` samples (or read from a run's
   ``teacher-schedules.json`` with ``--teacher``).
2. Every single move of ``S`` (one group's computed cell moved one step earlier or later, the FLOPs unchanged) is
   played on each of ``--samples`` other samples: ``gain[move, sample]`` in dB against ``S`` on that sample.
3. What a policy would observe at the move's first step, playing ``S``: every observation feature of the engine,
   the class label, and a summary of the first block's input (mean and standard deviation over tokens).
4. For each family of observations, a ridge regression per move, fitted across samples with sample-grouped
   cross-validation, predicts the gain of that move on held-out samples; a causal "move when predicted to help"
   rule then takes ``sum over moves of mean over samples of gain * [prediction > 0]``.

It compares that with the same rule fed only the move's mean gain over the training folds (what a shared schedule
can take), with the per-sample oracle of single moves (``sum of mean max(gain, 0)``), and with a positive control:
a feature equal to the true per-sample deviation plus noise of the same size, which shows the test finds a signal
where there is one.

    python scripts/adaptivity_predictability.py [--budgets 0.33 0.25 0.2] [--samples 48] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge

import runtime
from envs.pipelines import generate, prepare_pipeline
from policies import Policy
from reporting.schedule_search import ScheduleSearch
from runtime import Action, EngineOptions, Observation
from runtime.observations import ADAPTIVE_FEATURES, feature_names

PSNR_CAP = 60.0
FOLDS = 6
ALPHAS = (1.0, 10.0, 100.0)


class _Recorder(Policy):
    """Plays a static schedule and keeps, per step, the features and a summary of the first block's input."""

    def __init__(self, schedule: np.ndarray, names: tuple[str, ...], transformer: torch.nn.Module) -> None:
        self.schedule = torch.as_tensor(schedule)
        self.feature_names = names
        self.forecast_order = 1
        self.transformer = transformer
        self.features: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []

    def act(self, observation: Observation) -> torch.Tensor:
        self.features.append(observation.features.clone())
        state = runtime.get_engine(self.transformer).current_state()
        first = state.first_input[state.signal_rows].float()
        self.hidden.append(torch.cat([first.mean(dim=1), first.std(dim=1)], dim=1).cpu())
        step = min(observation.step_index, self.schedule.shape[0] - 1)
        return self.schedule[step].expand(observation.num_samples, -1).clone()


def single_moves(schedule: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
    """Every move of one computed cell one step earlier or later onto a forecast cell: ``(step, group, shift,
    table)``; step 0 stays computed."""
    moves = []
    for step, group in np.argwhere(schedule == int(Action.COMPUTE)):
        for shift in (-1, 1):
            target = step + shift
            if step == 0 or not 0 < target < len(schedule) or schedule[target, group] == int(Action.COMPUTE):
                continue
            table = schedule.copy()
            table[target, group], table[step, group] = int(Action.COMPUTE), int(Action.FORECAST)
            moves.append((int(step), int(group), shift, table))
    return moves


def realized(gain: np.ndarray, prediction: np.ndarray) -> float:
    """dB summed over moves that the rule "move when the prediction is positive" takes, averaged over samples."""
    return float((gain * (prediction > 0)).mean(axis=1).sum())


def cross_validated(gain: np.ndarray, inputs: list[np.ndarray] | None, alpha: float, folds: np.ndarray) -> np.ndarray:
    """Held-out predictions of each move's per-sample gain: ridge on ``inputs[move]`` (``(samples, F)``), or the
    move's mean gain over the training folds when ``inputs`` is ``None``."""
    prediction = np.zeros_like(gain)
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        for move in range(len(gain)):
            if inputs is None:
                prediction[move, test] = gain[move, train].mean()
                continue
            x = inputs[move]
            scale = x[train].std(axis=0) + 1e-9
            centre = x[train].mean(axis=0)
            model = Ridge(alpha=alpha).fit((x[train] - centre) / scale, gain[move, train])
            prediction[move, test] = model.predict((x[test] - centre) / scale)
    return prediction


def deviation_correlation(gain: np.ndarray, prediction: np.ndarray) -> float:
    """Correlation between predicted and true per-sample deviations from each move's mean."""
    predicted = prediction - prediction.mean(axis=1, keepdims=True)
    true = gain - gain.mean(axis=1, keepdims=True)
    if predicted.std() == 0:
        return 0.0
    return float(np.corrcoef(predicted.ravel(), true.ravel())[0, 1])


def measure(arguments: argparse.Namespace, budget: float, schedule: np.ndarray | None) -> dict[str, Any]:
    """The test at one budget."""
    started = time.perf_counter()
    pipe = prepare_pipeline(arguments.model, arguments.scheduler)
    options = EngineOptions(groups=arguments.groups, probe_blocks=0, forecast_order=1)
    classes = list(range(arguments.classes))
    if schedule is None:
        count = arguments.search_samples
        search = ScheduleSearch(
            pipe, [classes[i % len(classes)] for i in range(count)], list(range(count)), arguments.steps,
            arguments.guidance, options, psnr_cap=PSNR_CAP,
        )  # fmt: skip
        schedule = search.search(budget, sweeps=arguments.sweeps).schedule
    first = arguments.search_samples  # the test samples follow the search samples
    conditions = [classes[(first + i) % len(classes)] for i in range(arguments.samples)]
    seeds = [first + i for i in range(arguments.samples)]
    test = ScheduleSearch(pipe, conditions, seeds, arguments.steps, arguments.guidance, options, psnr_cap=PSNR_CAP)
    names = feature_names(arguments.groups, ADAPTIVE_FEATURES)
    recorder = _Recorder(schedule, names, pipe.transformer)
    with runtime.cached(pipe, recorder, options), torch.inference_mode():
        generate(pipe, conditions, seeds, arguments.steps, arguments.guidance)
    features = torch.stack(recorder.features, dim=1).numpy()  # (samples, steps, F)
    hidden = torch.stack(recorder.hidden, dim=1).numpy()
    n = len(seeds)
    base = test.evaluate_per_sample([schedule] * n, list(range(n)))
    moves = single_moves(schedule)
    values = test.evaluate_per_sample([m[3] for m in moves for _ in range(n)], list(range(n)) * len(moves))
    gain = values.reshape(len(moves), n) - base[None]
    first_step = [min(step, step + shift) for step, _, shift, _ in moves]
    varying = [i for i, name in enumerate(names) if features[:, :, i].std(axis=0).max() > 0]
    one_hot = np.eye(len(classes))[[classes.index(c) for c in conditions]]
    families: dict[str, list[np.ndarray]] = {
        "engine features": [features[:, t][:, varying] for t in first_step],
        "class label": [one_hot for _ in first_step],
        "first-block input summary": [hidden[:, t] for t in first_step],
        "all of them": [np.concatenate([features[:, t][:, varying], one_hot, hidden[:, t]], 1) for t in first_step],
    }
    folds = np.arange(n) % FOLDS
    rows = {"shared (move's mean gain)": {"realized": realized(gain, cross_validated(gain, None, 0.0, folds))}}
    for family, inputs in families.items():
        best = None
        for alpha in ALPHAS:
            prediction = cross_validated(gain, inputs, alpha, folds)
            row = {"alpha": alpha, "realized": realized(gain, prediction)}
            row["deviation_correlation"] = deviation_correlation(gain, prediction)
            if best is None or row["realized"] > best["realized"]:
                best = row
        rows[family] = best
    deviation = gain - gain.mean(axis=1, keepdims=True)
    noisy = deviation + np.random.default_rng(0).normal(0.0, deviation.std(), deviation.shape)
    control = cross_validated(gain, [noisy[m][:, None] for m in range(len(moves))], 1.0, folds)
    rows["positive control (true deviation + noise)"] = {
        "realized": realized(gain, control),
        "deviation_correlation": deviation_correlation(gain, control),
    }
    rows["per-sample oracle of single moves"] = {"realized": float(np.maximum(gain, 0).mean(axis=1).sum())}
    return {
        "budget": budget,
        "moves": len(moves),
        "samples": n,
        "base_psnr": float(base.mean()),
        "gain_variance": float(gain.var()),
        "sample_specific_variance": float(deviation.var()),
        "feature_spread": {
            names[i]: float(features[:, :, i].std(axis=0).mean() / (abs(features[:, :, i]).mean() + 1e-12))
            for i in varying
        },
        "rows": rows,
        "schedule": schedule.tolist(),
        "seconds": time.perf_counter() - started,
    }


def markdown(results: list[dict[str, Any]], arguments: argparse.Namespace) -> str:
    """The results as Markdown tables."""
    lines = [
        f"Model `{arguments.model}`, {arguments.steps} steps, guidance {arguments.guidance}; {arguments.samples} test "
        f"samples (training classes, seeds {arguments.search_samples}…); {FOLDS}-fold cross-validation by sample.",
        "",
        'dB taken by the rule "move when predicted to help", summed over the single moves of the shared schedule '
        "(each move alone, averaged over samples); correlation: predicted vs true per-sample deviation from the "
        "move's mean gain.",
        "",
        "| budget | observations | dB taken | correlation |",
        "|---:|---|---:|---:|",
    ]
    for result in results:
        for name, row in result["rows"].items():
            correlation = row.get("deviation_correlation")
            shown = "" if correlation is None else f"{correlation:+.3f}"
            lines.append(f"| {result['budget']:g} | {name} | {row['realized']:.2f} | {shown} |")
    lines += ["", "| budget | moves | mean PSNR of the shared schedule | gain variance | of it sample-specific |"]
    lines += ["|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['budget']:g} | {r['moves']} | {r['base_psnr']:.2f} | {r['gain_variance']:.3f} | "
            f"{r['sample_specific_variance']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini-dit-digits")
    parser.add_argument("--scheduler", default="default")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--classes", type=int, default=7, help="training classes 0..N-1")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.33, 0.25, 0.2])
    parser.add_argument("--samples", type=int, default=48, help="test samples the moves are played on")
    parser.add_argument("--search-samples", type=int, default=12, help="samples the shared schedule is searched on")
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--teacher", help="a run's teacher-schedules.json: take the shared schedules from it")
    parser.add_argument("--out", default="outputs/adaptivity/predictability")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(1)
    schedules: dict[float, np.ndarray] = {}
    if arguments.teacher:
        saved = json.loads(Path(arguments.teacher).read_text())
        entries = saved.get("settings") or [saved]
        entry = next(e for e in entries if e.get("num_inference_steps") == arguments.steps)
        schedules = {float(b): np.asarray(v["schedule"]) for b, v in entry["budgets"].items()}
    results = []
    for budget in arguments.budgets:
        result = measure(arguments, budget, schedules.get(budget))
        print(f"budget {budget:g}: " + ", ".join(f"{k} {v['realized']:.2f}" for k, v in result["rows"].items()))
        results.append(result)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"arguments": vars(arguments), "results": results}, indent=1))
    (out / "results.md").write_text(markdown(results, arguments))
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training a cache policy with Stable-Baselines3 on the batched cache-schedule environment."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.logger import CSVOutputFormat, Logger
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize
from tqdm.auto import tqdm

import runtime
from envs.conditions import condition_label
from envs.pipelines import make_sampler
from envs.sampling import SamplingSetting, default_setting
from envs.schedulers import SchedulerSwitch
from policies import ActionRecorder, LearnedPolicy, export_policy, export_schedule, from_sb3
from policies.learned import ACTIVATIONS
from reporting.evaluation import EvaluationPoint, timed_generation
from reporting.plots import image_grid, pareto_plot
from reporting.schedule_search import SearchResult
from reporting.tracking import start_run
from runtime import EngineOptions

from .callbacks import CheckpointCallback, EvaluationCallback, ProgressBarCallback
from .checkpoints import MODEL_FILE, NORMALIZATION_FILE, atomic_write, read_state
from .config import ConfigError, TrainConfig, parse_setting
from .wandb_output import WandbOutputFormat
from .warm_start import behaviour_clone, merge_demonstrations, model_actor, record_demonstrations
from .workers import LocalWorkers, Workers

CONFIG_FILE = "config.yaml"
POLICY_FILE = "policy.safetensors"
SCHEDULE_FILE = "schedule.safetensors"
TEACHER_FILE = "teacher-schedules.json"
HISTORY_FILE = "eval-history.json"
CHECKPOINTS = "checkpoints"
ALGORITHMS = {"ppo": PPO, "maskable_ppo": MaskablePPO}
SETTING_FIELDS = ("budget", "scheduler", "num_inference_steps")
"""Fields of an evaluation point that name where it was measured rather than what it measured."""


@dataclass
class TrainResult:
    """What a finished training run produced.

    Attributes:
        run_dir: The run's folder.
        policy_path: The exported best policy.
        schedule_path: Its static step × group schedule.
        points: The held-out evaluation of the exported policy, one point per budget.
        num_timesteps: Environment steps trained.
    """

    run_dir: Path
    policy_path: Path | None
    schedule_path: Path | None
    points: list[EvaluationPoint] = field(default_factory=list)
    num_timesteps: int = 0


class Trainer:
    """Trains, evaluates on held-out conditions and seeds, checkpoints, exports and tracks one run.

    Args:
        config: The resolved configuration.
        run_dir: Folder of the run (config, checkpoints, policy, W&B files).
        wandb_mode: ``"online"``, ``"offline"``, ``"disabled"`` or ``None`` (automatic).
        resume: Continue from the last checkpoint in ``run_dir`` and the same W&B run.
        workers: Where the environment, the search and validation run (default: this process; see
            :mod:`agents.workers`). The caller closes them.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        wandb_mode: str | None = None,
        resume: bool = False,
        workers: Workers | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.wandb_mode = wandb_mode
        self.resume = resume
        self.state: dict[str, Any] = {"best_score": None, "evaluations": 0, "wandb_run_id": None}
        self.history: list[tuple[int, list[EvaluationPoint]]] = []
        self.best_points: list[EvaluationPoint] = []
        self.workers = workers if workers is not None else LocalWorkers(config.ray.shards)

    # -- the run ---------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Trains to ``agent.total_timesteps`` (continuing from a checkpoint on resume) and exports the policy."""
        config, agent = self.config, self.config.agent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = self.run_dir / CHECKPOINTS
        if self.resume:
            saved = read_state(checkpoints)
            if saved is None:
                raise FileNotFoundError(
                    f"{checkpoints} holds no complete checkpoint to resume from (the first one is written after the "
                    "warm start): start the run again without --resume."
                )
            self.state.update(saved)
        elif (self.run_dir / CONFIG_FILE).is_file():
            raise FileExistsError(
                f"{self.run_dir} already holds a training run; resume it (resume=True) or use another folder."
            )
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)  # on resume: with its new total_timesteps, ...
        atomic_write(self.run_dir / CONFIG_FILE, lambda p: Path(p).write_text(text))

        self.wandb = start_run(
            project=config.wandb.project,
            entity=config.wandb.entity,
            tags=config.wandb.tags,
            config=config.to_dict(),
            mode=self.wandb_mode,
            out_dir=self.run_dir,
            job_type="train",
            run_id=self.state.get("wandb_run_id"),
        )
        self.state["wandb_run_id"] = self.wandb.id

        torch.manual_seed(agent.seed)
        self.vec_env = self.workers.vec_env(agent.num_envs, config.env, seed=agent.seed)
        env = VecMonitor(self.vec_env)
        if agent.normalize_observations:
            if self.resume and (checkpoints / NORMALIZATION_FILE).is_file():
                env = VecNormalize.load(str(checkpoints / NORMALIZATION_FILE), env)
            else:
                env = VecNormalize(env, norm_obs=True, norm_reward=False, clip_obs=10.0, gamma=agent.gamma)
        self.model = self._build_model(env, checkpoints if self.resume else None)
        self.model.set_logger(
            Logger(
                str(self.run_dir), [CSVOutputFormat(str(self.run_dir / "progress.csv")), WandbOutputFormat(self.wandb)]
            )
        )

        self.eval_pipe = make_sampler(config.env, scheduler="default")  # unhooked: evaluation attaches its own engine
        self.eval_schedulers = SchedulerSwitch(self.eval_pipe.pipe)
        self.eval_conditions, self.eval_seeds = self._evaluation_split()
        self.eval_settings = config.evaluation_settings()
        self.references: dict[SamplingSetting, tuple[torch.Tensor, float]] = {}
        self.eval_schedulers.use(self.eval_settings[0].scheduler)
        timed_generation(self.eval_pipe, self.eval_conditions[:1], self.eval_seeds[:1], 2, config.env.guidance_scale)
        for setting in self.eval_settings:
            self._reference(setting)

        checkpoint = CheckpointCallback(checkpoints, config.checkpoint.every_timesteps, lambda: dict(self.state))

        def evaluate_and_save() -> None:  # outside model.learn, where the callbacks do both
            self.evaluate(self.model)
            checkpoint.model = self.model
            checkpoint.save()

        if config.warm_start.enabled and not self.resume:
            self.warm_start()
            evaluate_and_save()
        remaining = agent.total_timesteps - self.model.num_timesteps
        if remaining > 0:
            callbacks = [
                ProgressBarCallback(agent.total_timesteps),
                checkpoint,
                EvaluationCallback(config.eval.every_timesteps, self.evaluate),
            ]
            self.model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=not self.resume)
        if not self.history or self.history[-1][0] != self.model.num_timesteps:
            evaluate_and_save()
        result = self._finish()
        self.vec_env.close()
        return result

    def warm_start(self) -> None:
        """Searches a schedule per anchor setting and budget, records them in the training environment and clones
        them all into the model."""
        config, warm = self.config, self.config.warm_start
        env_config = config.env
        seeds_from = env_config.train_seeds[0]
        classes = env_config.conditions("train")

        def split(first: int, count: int) -> tuple[list[int], list[int]]:
            conditions = [classes[(first + i) % len(classes)] for i in range(count)]
            return conditions, [seeds_from + first + i for i in range(count)]

        search_split = split(0, warm.search_samples)
        per_sample = warm.teacher == "per_sample"
        settings = config.warm_start_settings()
        if warm.schedules_from is not None:
            found = load_teacher(warm.schedules_from, warm, len(search_split[1]), settings)
        else:
            self.eval_schedulers.use("default")  # the search switches schedulers itself
            found = self.workers.search_settings(
                env_config.model,
                settings,
                warm.budgets,
                conditions=search_split[0],
                seeds=search_split[1],
                guidance=env_config.guidance_scale,
                engine_options=self.engine_options,
                sweeps=warm.sweeps,
                per_group=warm.per_group,
                workers=warm.workers if env_config.device == "cpu" else 1,  # one model copy per accelerator
                pipe=self.eval_pipe,
                schedulers=self.eval_schedulers,
                log=tqdm.write,
                per_sample=per_sample,
                env_config=env_config,
                sweeps_at={parse_setting(label): n for label, n in warm.sweeps_at.items()},
            )
        # A per-sample teacher's schedules are played on the samples they were searched on.
        demo_split = search_split if per_sample else split(warm.search_samples, warm.demo_samples)
        episodes, conditioned = self.vec_env.episodes, env_config.budget_conditioned
        schedules: dict[SamplingSetting, dict[float, np.ndarray]] = {}
        parts, teacher = [], []
        for setting in settings:
            results = found[setting]
            schedules[setting] = {
                float(budget): np.stack([r.schedule for r in result]) if per_sample else result.schedule
                for budget, result in zip(warm.budgets, results, strict=True)
            }
            part = record_demonstrations(
                episodes, schedules[setting], *demo_split, budget_conditioned=conditioned, setting=setting
            )
            parts.append(part)
            teacher.append(_teacher_entry(setting, warm.budgets, results, part, per_sample))
        demonstrations = merge_demonstrations(parts)
        if env_config.group_rollouts > 1:
            # PPO's rewards are then relative to the mean of the draw's group, where the teacher's own return is 0:
            # a critic cloned on absolute returns would start PPO with advantages made of its own error.
            demonstrations = dataclasses.replace(demonstrations, returns=np.zeros_like(demonstrations.returns))
        metrics = behaviour_clone(
            self.model,
            demonstrations,
            epochs=warm.epochs,
            learning_rate=warm.learning_rate,
            seed=config.agent.seed,
            label_smoothing=warm.label_smoothing,
        )
        rounds = []
        dataset = demonstrations
        for round_index in range(warm.dagger_rounds):
            visited = [
                record_demonstrations(
                    episodes,
                    schedules[setting],
                    *demo_split,
                    budget_conditioned=conditioned,
                    actor=model_actor(self.model),
                    setting=setting,
                )
                for setting in settings
            ]
            dataset = merge_demonstrations([dataset, *visited])
            metrics = behaviour_clone(
                self.model,
                dataset,
                epochs=warm.dagger_epochs,
                learning_rate=warm.learning_rate,
                seed=config.agent.seed + round_index + 1,
                update_normalization=False,
                label_smoothing=warm.label_smoothing,
            )
            psnr = {s.label: v.psnr for s, v in zip(settings, visited, strict=True)}
            fraction = {s.label: v.compute_fraction for s, v in zip(settings, visited, strict=True)}
            rounds.append({"policy_psnr": psnr, "policy_fraction": fraction, **metrics})
            mean_psnr = np.mean([value for v in visited for value in v.psnr.values()])
            tqdm.write(
                f"DAgger round {round_index + 1}: the policy's own rollouts scored {mean_psnr:.2f} dB; refitted on "
                f"{len(dataset.actions)} states, {metrics['accuracy']:.1%} of the teacher's labels matched"
            )
        normalizer = self.model.get_vec_normalize_env()
        if normalizer is not None:
            # The cloned network reads features scaled by these statistics: letting PPO's exploration move them
            # would change the cloned policy's decisions without any gradient step. (Saved with the checkpoint.)
            normalizer.training = False
        summary = {"clone": metrics, "teacher": warm.teacher, "settings": teacher, "dagger": rounds}
        atomic_write(self.run_dir / TEACHER_FILE, lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
        logged = {f"warm_start/{key}": value for key, value in metrics.items()}
        for entry in teacher:
            label = f"{entry['scheduler']}_{entry['num_inference_steps']}"
            prefix = "warm_start" if len(teacher) == 1 else f"warm_start/{label}"
            for budget, values in entry["budgets"].items():
                logged[f"{prefix}/budget_{budget}/psnr"] = values["psnr"]
                logged[f"{prefix}/budget_{budget}/start_psnr"] = values["start_psnr"]
        self.wandb.log({**logged, "global_step": 0})
        tqdm.write(f"warm start: behaviour cloning matches {metrics['accuracy']:.1%} of the teacher's decisions")

    def _build_model(self, env: Any, checkpoint: Path | None) -> Any:
        agent = self.config.agent
        algorithm = ALGORITHMS[agent.algorithm]
        if checkpoint is not None:
            return algorithm.load(str(checkpoint / MODEL_FILE), env=env, device="cpu")
        return algorithm(
            "MlpPolicy",
            env,
            learning_rate=agent.learning_rate,
            n_steps=agent.n_steps,
            batch_size=agent.batch_size,
            n_epochs=agent.n_epochs,
            gamma=agent.gamma,
            gae_lambda=agent.gae_lambda,
            ent_coef=agent.ent_coef,
            clip_range=agent.clip_range,
            policy_kwargs={
                "net_arch": {"pi": list(agent.net_arch), "vf": list(agent.net_arch)},
                "activation_fn": ACTIVATIONS[agent.activation],
            },
            seed=agent.seed,
            device="cpu",
            verbose=0,
        )

    # -- evaluation and export -------------------------------------------------------------------------------

    def learned_policy(self, model: Any) -> LearnedPolicy:
        """The current actor as a plain-torch policy (what gets exported)."""
        env_config = self.config.env
        return from_sb3(
            model,
            model.get_vec_normalize_env(),
            feature_names=self.vec_env.engine.feature_names,
            engine_options=self.engine_options,
            budget_conditioned=env_config.budget_conditioned,
            model_family=env_config.model,
            scheduler=self.scheduler_classes[0],
            training_config=self.config.to_dict(),
            trained_on={
                "budget_range": list(env_config.budget_range) if env_config.budget_conditioned else None,
                "num_inference_steps": env_config.num_inference_steps,
                "schedulers": self.scheduler_classes,
            },
        )

    @property
    def scheduler_classes(self) -> list[str]:
        """Class names of the schedulers the environment draws from, in the configured order."""
        names = [type(self.eval_schedulers.scheduler(n)).__name__ for n in self.config.env.scheduler_names]
        return list(dict.fromkeys(names))

    @property
    def engine_options(self) -> EngineOptions:
        """Engine options of the training environment."""
        return self.config.env.engine_options

    @property
    def budgets(self) -> list[float | None]:
        """Budgets the policy is evaluated at."""
        return list(self.config.eval.budgets) if self.config.env.budget_conditioned else [None]

    def _reference(self, setting: SamplingSetting) -> tuple[torch.Tensor, float]:
        """The uncached held-out generation at ``setting`` (computed once); leaves its scheduler in the pipeline."""
        self.eval_schedulers.use(setting.scheduler)
        if setting not in self.references:
            env_config = self.config.env
            self.references[setting] = timed_generation(
                self.eval_pipe, self.eval_conditions, self.eval_seeds, setting.steps, env_config.guidance_scale
            )
        return self.references[setting]

    def evaluate(self, model: Any) -> None:
        """Evaluates the current policy on the held-out split, logs it, and exports it when it is the best so far.

        With several evaluation settings (schedulers × ``eval.steps``) every one is evaluated, its metrics are
        logged under ``eval/<scheduler>_<steps>/``, and the score is the mean over all of their points.
        """
        env_config = self.config.env
        policy = self.learned_policy(model)
        points = []
        for setting in self.eval_settings:
            reference = self._reference(setting)
            measured = self.workers.evaluate_policy(
                self.eval_pipe,
                policy,
                setting=setting,
                conditions=self.eval_conditions,
                seeds=self.eval_seeds,
                steps=setting.steps,
                guidance=env_config.guidance_scale,
                budgets=self.budgets,
                engine_options=self.engine_options,
                reference=reference,
                replay=True,
            )
            points += [
                dataclasses.replace(p, scheduler=setting.scheduler, num_inference_steps=setting.steps)
                for p in measured
            ]
        step = int(model.num_timesteps)
        self.history.append((step, points))
        score = self._score(points)
        metrics: dict[str, Any] = {"eval/score": score, "global_step": step}
        for point in points:
            prefix = "eval" if len(self.eval_settings) == 1 else f"eval/{point.scheduler}_{point.num_inference_steps}"
            prefix = prefix if point.budget is None else f"{prefix}/budget_{point.budget:g}"
            for key, value in point.to_dict().items():
                if key not in SETTING_FIELDS and value is not None:
                    metrics[f"{prefix}/{key}"] = value
        self.state["evaluations"] = self.state.get("evaluations", 0) + 1
        best = self.state.get("best_score")
        if best is None or score > best:
            self.state["best_score"] = score
            self.state["best_timesteps"] = step
            self.best_points = points
            self._export(policy)
        metrics["eval/best_score"] = self.state["best_score"]
        self._record_evaluation(step, score, points)
        metrics.update(self._figures(policy, points))
        self.wandb.log(metrics)

    def _record_evaluation(self, step: int, score: float, points: list[EvaluationPoint]) -> None:
        """Appends this evaluation to ``eval-history.json`` (kept across ``--resume``)."""
        path = self.run_dir / HISTORY_FILE
        history = json.loads(path.read_text()) if path.is_file() else []
        history = [entry for entry in history if entry["timesteps"] < step]  # a resumed run re-evaluates from there
        history.append({"timesteps": step, "score": score, "points": [p.to_dict() for p in points]})
        atomic_write(path, lambda p: Path(p).write_text(json.dumps(history, indent=1)))

    def _score(self, points: list[EvaluationPoint]) -> float:
        psnr = float(np.mean([p.psnr for p in points]))
        overspend = [max(0.0, p.compute_fraction - p.budget) for p in points if p.budget is not None]
        return psnr - self.config.eval.overspend_weight * 100.0 * float(np.mean(overspend) if overspend else 0.0)

    def _export(self, policy: LearnedPolicy) -> None:
        export_policy(self.run_dir / POLICY_FILE, policy)
        budget = self.budgets[len(self.budgets) // 2]
        setting = default_setting(self.config.env)  # the static table is for one scheduler and step count
        self.eval_schedulers.use(setting.scheduler)
        schedule = record_schedule(
            self.eval_pipe,
            policy,
            budget,
            self.eval_conditions,
            self.eval_seeds,
            self.config,
            self.engine_options,
            steps=setting.steps,
        )
        export_schedule(
            self.run_dir / SCHEDULE_FILE,
            schedule,
            engine_options=self.engine_options,
            model_family=self.config.env.model,
            scheduler=type(self.eval_pipe.scheduler).__name__,
            training_config=self.config.to_dict(),
        )
        summary = {"timesteps": self.state.get("best_timesteps"), "points": [p.to_dict() for p in self.best_points]}
        atomic_write(self.run_dir / "policy-eval.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))

    def _figures(self, policy: LearnedPolicy, points: list[EvaluationPoint]) -> dict[str, Any]:
        if self.wandb.disabled:
            return {}
        import wandb

        series: dict[str, list[tuple[float, float]]] = {}
        several = len(self.eval_settings) > 1
        for step, step_points in self.history:
            for p in step_points:
                name = f"{step} steps" + (f", {p.scheduler} {p.num_inference_steps}" if several else "")
                series.setdefault(name, []).append((p.flops_speedup, p.psnr))
        figures = {"eval/pareto": wandb.Image(pareto_plot(series, "held-out PSNR vs FLOP speedup"))}
        count = self.config.eval.grid_samples
        if count:
            env_config, setting = self.config.env, self.eval_settings[0]  # the grid shows the first setting
            conditions, seeds = self.eval_conditions[:count], self.eval_seeds[:count]
            rows, labels = [self._reference(setting)[0][:count]], ["uncached"]
            for point in points:
                if (point.scheduler, point.num_inference_steps) != (setting.scheduler, setting.steps):
                    continue
                with runtime.cached(self.eval_pipe, policy, self.engine_options, budget=point.budget):
                    images, _ = timed_generation(
                        self.eval_pipe, conditions, seeds, setting.steps, env_config.guidance_scale
                    )
                rows.append(images)
                labels.append(f"budget {point.budget}\n{point.flops_speedup:.1f}x" if point.budget else "cached")
            figures["eval/samples"] = wandb.Image(
                image_grid(
                    rows, labels, [condition_label(c) if isinstance(c, str) else f"class {c}" for c in conditions]
                )
            )
        return figures

    def _evaluation_split(self) -> tuple[list[int | str], list[int]]:
        env_config, count = self.config.env, self.config.eval.num_samples
        classes = env_config.conditions("eval")
        start, stop = env_config.eval_seeds
        if count > stop - start:
            raise ValueError(f"eval.num_samples={count} exceeds the {stop - start} held-out seeds of env.eval_seeds.")
        return [classes[i % len(classes)] for i in range(count)], [start + i for i in range(count)]

    def _finish(self) -> TrainResult:
        import wandb

        policy_path = self.run_dir / POLICY_FILE
        schedule_path = self.run_dir / SCHEDULE_FILE
        if policy_path.is_file() and not self.wandb.disabled:
            artifact = wandb.Artifact(
                "policy-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.config.env.model).strip("_"),
                type="policy",
                metadata={"best_score": self.state.get("best_score"), "timesteps": self.state.get("best_timesteps")},
            )
            artifact.add_file(str(policy_path))
            if schedule_path.is_file():
                artifact.add_file(str(schedule_path))
            self.wandb.log_artifact(artifact)
        if not self.best_points:
            saved = self.run_dir / "policy-eval.json"
            if saved.is_file():
                self.best_points = [EvaluationPoint(**p) for p in json.loads(saved.read_text())["points"]]
        self.wandb.summary.update({f"best/{k}": v for k, v in self.state.items() if isinstance(v, (int, float))})
        self.wandb.finish()
        return TrainResult(
            run_dir=self.run_dir,
            policy_path=policy_path if policy_path.is_file() else None,
            schedule_path=schedule_path if schedule_path.is_file() else None,
            points=self.best_points,
            num_timesteps=int(self.model.num_timesteps),
        )


def _teacher_entry(
    setting: SamplingSetting, budgets: list[float], results: list[Any], demonstrations: Any, per_sample: bool
) -> dict[str, Any]:
    """The teacher of one anchor setting as ``teacher-schedules.json`` keeps it (read back by :func:`load_teacher`)."""
    entry: dict[str, Any] = {"scheduler": setting.scheduler, "num_inference_steps": setting.steps, "budgets": {}}
    for budget, found in zip(budgets, results, strict=True):
        found = found if per_sample else [found]
        values = {
            "psnr": float(np.mean([r.psnr for r in found])),
            "start_psnr": float(np.mean([r.start_psnr for r in found])),
            "compute_fraction": demonstrations.compute_fraction[float(budget)],  # FLOPs, as the engine counts
            "schedule": found[0].schedule.tolist() if not per_sample else [r.schedule.tolist() for r in found],
        }
        if per_sample:
            values["sample_psnr"] = [r.psnr for r in found]
            values["sample_start_psnr"] = [r.start_psnr for r in found]
        entry["budgets"][f"{budget:g}"] = values
    return entry


def load_teacher(
    path: str | Path, warm: Any, samples: int, settings: list[SamplingSetting]
) -> dict[SamplingSetting, list[SearchResult] | list[list[SearchResult]]]:
    """The searched schedules of an earlier run's ``teacher-schedules.json``, as ``search_settings`` returns them.

    Raises:
        ConfigError: If the file is missing, or was searched with another teacher, other budgets, other anchor
            settings or, for a per-sample teacher, another number of search samples.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TEACHER_FILE
    if not path.is_file():
        raise ConfigError(f"warm_start.schedules_from={str(path)!r}: no such file (a run's {TEACHER_FILE}).")
    saved = json.loads(path.read_text())
    teacher = saved.get("teacher", "shared")
    entries = saved.get("settings")
    if entries is None:  # written before anchors: one setting
        entries = [{k: saved.get(k) for k in ("scheduler", "num_inference_steps", "budgets")}]
    by_setting = {SamplingSetting(e["scheduler"], int(e["num_inference_steps"])): e for e in entries}
    budgets = [f"{b:g}" for b in warm.budgets]
    missing = [s.label for s in settings if s not in by_setting]
    if teacher != warm.teacher or missing:
        raise ConfigError(
            f"warm_start.schedules_from={str(path)!r} holds a {teacher!r} teacher at "
            f"{[s.label for s in by_setting]}; this run asks for a {warm.teacher!r} teacher at "
            f"{[s.label for s in settings]}."
        )
    found: dict[SamplingSetting, list[Any]] = {}
    for setting in settings:
        entry = by_setting[setting]
        if sorted(entry["budgets"]) != sorted(budgets):
            raise ConfigError(
                f"warm_start.schedules_from={str(path)!r} holds budgets {list(entry['budgets'])} at {setting.label}; "
                f"this run asks for {budgets}."
            )
        results: list[Any] = []
        for budget, key in zip(warm.budgets, budgets, strict=True):
            values = entry["budgets"][key]
            if teacher == "shared":
                schedule = np.asarray(values["schedule"])
                results.append(SearchResult(budget, schedule, values["psnr"], values["start_psnr"], 0))
                continue
            tables = values["schedule"]
            if len(tables) != samples:
                raise ConfigError(
                    f"warm_start.schedules_from={str(path)!r} has {len(tables)} per-sample schedules at budget "
                    f"{key}; warm_start.search_samples={samples}."
                )
            scores = zip(tables, values["sample_psnr"], values["sample_start_psnr"], strict=True)
            results.append([SearchResult(budget, np.asarray(t), p, q, 0) for t, p, q in scores])
        found[setting] = results
    return found


def record_schedule(
    pipe: Any,
    policy: Any,
    budget: float | None,
    conditions: list[int | str],
    seeds: list[int],
    config: TrainConfig,
    engine_options: EngineOptions,
    steps: int | None = None,
) -> torch.Tensor:
    """The policy's deterministic decisions on the given samples, reduced to one static ``(steps, groups)`` table.

    ``steps`` defaults to the environment's step count (its largest with a range).
    """
    steps = steps if steps is not None else config.env.steps_range[1]
    recorder = ActionRecorder(policy)
    with runtime.cached(pipe, recorder, engine_options, budget=budget):
        timed_generation(pipe, conditions, seeds, steps, config.env.guidance_scale)
    return recorder.static_replay()

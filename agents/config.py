"""The training configuration: YAML files plus ``--set key=value`` overrides, validated field by field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.config import SCHEDULER_NAMES, ConfigError, EnvConfig, from_dict
from envs.sampling import SamplingSetting
from envs.shards import check_shard_split
from policies.learned import ACTIVATIONS
from runtime.budget import check_budgets

ALGORITHMS = ("ppo", "maskable_ppo")


@dataclass
class AgentConfig:
    """The RL algorithm and its hyper-parameters.

    Attributes:
        algorithm: ``"maskable_ppo"`` (sb3-contrib, uses the environment's action masks) or ``"ppo"``.
        total_timesteps: Environment steps (one per denoising step and sample) to train for.
        num_envs: Samples per batched generation (sub-environments of the vector environment).
        n_steps: Steps per sub-environment per rollout (a multiple of the episode length keeps episodes whole).
        batch_size: PPO minibatch size.
        n_epochs: PPO epochs per rollout.
        learning_rate: Adam learning rate.
        gamma: Discount (1.0: the episode is short and the reward already trades off its whole length).
        gae_lambda: GAE λ.
        ent_coef: Entropy bonus.
        clip_range: PPO clip range.
        net_arch: Hidden layer sizes of the actor and of the critic.
        activation: A name of ``policies.learned.ACTIVATIONS`` (``"tanh"``, ``"relu"``, ...), after every hidden layer.
        normalize_observations: Normalise observations with running statistics (exported with the policy).
        seed: Seed of the agent and of the episode draws.
    """

    algorithm: str = "maskable_ppo"
    total_timesteps: int = 200_000
    num_envs: int = 16
    n_steps: int = 50
    batch_size: int = 400
    n_epochs: int = 8
    learning_rate: float = 1e-4
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    clip_range: float = 0.1
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    normalize_observations: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm={self.algorithm!r}: use one of {list(ALGORITHMS)}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation={self.activation!r}: use one of {list(ACTIVATIONS)}.")
        for name in ("total_timesteps", "num_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1.")
        if not self.net_arch or any(size < 1 for size in self.net_arch):
            raise ConfigError(f"net_arch={self.net_arch}: give one or more positive layer sizes.")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate={self.learning_rate}: must lie in (0, 1).")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError(f"gamma={self.gamma}, gae_lambda={self.gae_lambda}: must lie in [0, 1].")


@dataclass
class WarmStartConfig:
    """Searched schedules, behaviour-cloned into the policy before PPO (see :mod:`agents.warm_start`).

    Attributes:
        enabled: Search and clone before the first PPO update (skipped on ``--resume``).
        budgets: Budgets to search a static schedule for (the policy interpolates between them).
        search_samples: Training samples the search scores schedules on (training classes cycled, the first
            training seeds).
        sweeps: Local-search passes over whole steps and again over single groups' cells.
        per_group: Also move single groups' computed cells.
        demo_samples: Training samples each schedule is played on to record observations (the next seeds);
            unused with the ``per_sample`` teacher, whose schedules are played on the samples they were searched on.
        workers: Processes the budgets are searched in (one torch thread each).
        epochs: Behaviour-cloning epochs over the demonstrations.
        learning_rate: Behaviour-cloning Adam learning rate.
        label_smoothing: Share of each cloned decision's probability spread over the possible actions (0: the
            teacher's alone): the cloned policy's deterministic actions stay the teacher's, but PPO's sampled
            rollouts then try other actions now and then, which is what PPO learns from.
        teacher: ``"shared"``: one schedule per budget, searched on all search samples together; ``"per_sample"``:
            one per search sample and budget, searched on that sample alone (a privileged teacher: it sees the
            sample's uncached output, which the policy must infer from its observations).
        dagger_rounds: Rounds of DAgger after cloning: the policy runs on the search samples, every state it
            visits is labelled with the teacher's action for that sample and step, and the policy is fitted again
            on all labelled states so far.
        dagger_epochs: Behaviour-cloning epochs of each DAgger round.
        schedules_from: An earlier run's folder or its ``teacher-schedules.json``: clone its searched schedules
            instead of searching again (they must be for the same teacher, budgets, search samples and steps).
        num_inference_steps: Denoising steps the teacher's schedules are searched and demonstrated at (a schedule
            is a table of one row per step). ``None``: the environment's step count, or with a step range its
            largest count; the policy is cloned at this one count and PPO then trains it across the range.
        scheduler: Scheduler the teacher is searched and demonstrated with. ``None``: the environment's, or with
            a list of schedulers the first.
        settings: Several anchors to search and demonstrate the teacher at, each ``<scheduler>_<steps>`` (e.g.
            ``[ddim_50, ddim_20, dpmsolver++_20]``): a schedule is searched per anchor and budget, and the policy is
            cloned on all of them at once, so that it reads the step count and the scheduler from its features and
            interpolates between the anchors. Replaces ``num_inference_steps`` and ``scheduler`` (leave those
            null).
        sweeps_at: Anchors searched with another number of sweeps than ``sweeps``, by label (e.g.
            ``{dpmsolver++_50: 0}``); 0 keeps the best evenly spaced start of each budget without local search:
            an anchor that costs a few generations and still shows the policy that setting.
    """

    enabled: bool = True
    budgets: list[float] = field(default_factory=lambda: [0.15, 0.2, 0.25, 0.33, 0.42, 0.5])
    search_samples: int = 12
    sweeps: int = 2
    per_group: bool = True
    demo_samples: int = 16
    workers: int = 2
    epochs: int = 300
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    teacher: str = "shared"
    dagger_rounds: int = 0
    dagger_epochs: int = 100
    schedules_from: str | None = None
    num_inference_steps: int | None = None
    scheduler: str | None = None
    settings: list[str] | None = None
    sweeps_at: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.settings is not None:
            if self.num_inference_steps is not None or self.scheduler is not None:
                raise ConfigError(
                    "settings names the teacher's schedulers and step counts: leave num_inference_steps and "
                    "scheduler null beside it."
                )
            if not self.settings or len(set(self.settings)) != len(self.settings):
                raise ConfigError(f"settings={self.settings}: name each anchor once, at least one.")
            for label in self.settings:
                parse_setting(label)
        unknown = sorted(set(self.sweeps_at) - set(self.settings or []))
        if unknown:
            raise ConfigError(f"sweeps_at names {unknown}, which are not in settings={self.settings}.")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in self.sweeps_at.values()):
            raise ConfigError(f"sweeps_at={self.sweeps_at}: give a whole number of sweeps >= 0 per anchor.")
        if self.num_inference_steps is not None and self.num_inference_steps < 2:
            raise ConfigError(f"num_inference_steps={self.num_inference_steps}: use at least 2 (or null).")
        if self.scheduler is not None and self.scheduler not in SCHEDULER_NAMES:
            raise ConfigError(f"scheduler={self.scheduler!r}: use one of {list(SCHEDULER_NAMES)} (or null).")
        if self.teacher not in ("shared", "per_sample"):
            raise ConfigError(f"teacher={self.teacher!r}: use 'shared' or 'per_sample'.")
        if self.dagger_rounds < 0 or self.dagger_epochs < 1:
            raise ConfigError(
                f"dagger_rounds={self.dagger_rounds}, dagger_epochs={self.dagger_epochs}: "
                "need rounds >= 0 and epochs >= 1."
            )
        check_budgets(self.budgets, "budgets", ConfigError)  # at least one: a schedule is searched for each
        for name in ("search_samples", "sweeps", "demo_samples", "workers", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1.")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate={self.learning_rate}: must lie in (0, 1).")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: must lie in [0, 1).")


@dataclass
class EvalConfig:
    """Periodic evaluation on the held-out split, inside an unmodified pipeline.

    Attributes:
        every_timesteps: Evaluate (and export the best policy) this often.
        num_samples: Held-out generations per evaluation (held-out classes cycled, held-out seeds in order).
        budgets: Budgets to evaluate a budget-conditioned policy at.
        grid_samples: Samples in the uncached-vs-cached image grid logged to W&B.
        overspend_weight: The score of an evaluation is the mean capped PSNR minus this weight times the mean
            overspend (compute fraction above the budget, in percent points).
        steps: Denoising step counts to evaluate at, each with every scheduler of ``env.scheduler``. ``None``: the
            environment's step count, or with a step range ``[low, high]``. With more than one step count or
            scheduler, metrics are logged as ``eval/<scheduler>_<steps>/budget_<b>/...`` and the score is the
            mean over all of them.
    """

    every_timesteps: int = 40_000
    num_samples: int = 12
    budgets: list[float] = field(default_factory=lambda: [0.2, 0.25, 0.33, 0.5])
    grid_samples: int = 6
    overspend_weight: float = 1.0
    steps: list[int] | None = None

    def __post_init__(self) -> None:
        if self.every_timesteps < 1 or self.num_samples < 1 or self.grid_samples < 0:
            raise ConfigError("every_timesteps and num_samples must be >= 1, grid_samples >= 0.")
        if self.steps is not None and (not self.steps or any(s < 2 for s in self.steps)):
            raise ConfigError(f"steps={self.steps}: give one or more step counts >= 2 (or null).")
        if self.budgets:  # may be empty: only a budget-conditioned policy is evaluated at them
            check_budgets(self.budgets, "budgets", ConfigError)


@dataclass
class CheckpointConfig:
    """Checkpoints for ``--resume``: written atomically, so a killed run loses at most one interval.

    Attributes:
        every_timesteps: Save this often.
    """

    every_timesteps: int = 10_000

    def __post_init__(self) -> None:
        if self.every_timesteps < 1:
            raise ConfigError(f"every_timesteps={self.every_timesteps}: must be >= 1.")


@dataclass
class WandbConfig:
    """Weights & Biases settings (the mode comes from ``--wandb-mode``, ``WANDB_MODE`` or the login state).

    Attributes:
        project: Project name.
        entity: Team or user, or ``None`` for the default.
        tags: Run tags.
    """

    project: str = "cachepilot"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RayConfig:
    """Where the work runs: in this process (the default) or on Ray workers (``pip install -e .[ray]``).

    With ``workers: 1`` and no ``address`` everything runs here as always, and Ray is never imported. Otherwise each
    worker is a Ray actor holding one pipeline with the cache engine (one GPU, or ``cpus_per_worker`` cores), serving
    reference generation, the warm start's search candidates, the environment's sub-batches, validation and
    benchmark rows (see docs/distributed.md).

    Attributes:
        workers: Ray actors (``--workers N``); 1 without an address: no Ray.
        address: Ray cluster to join: ``"auto"`` (a cluster started with ``ray start``), ``"ray://host:10001"``,
            or ``None``: start a Ray instance on this machine when ``workers > 1``.
        env_shards: Sub-batches the environment's ``agent.num_envs`` samples are split into, each one batched
            generation (with Ray: on its own worker). ``None``: one per worker. Results depend on the shard count,
            never on the worker count: fix it to compare runs with different ``workers`` (with ``workers: 1`` the
            shards run here, one after another, in copies of the pipeline).
        cpus_per_worker: CPU cores (and torch threads) of each worker.
        gpus_per_worker: GPUs of each worker; ``None``: 1 when ``env.device`` is CUDA, else 0.
        max_restarts: Times Ray restarts a worker whose process died (``-1``: always); its work is redone.
        max_task_retries: Times a task of a dead worker is retried on its restarted self (``-1``: always).
    """

    workers: int = 1
    address: str | None = None
    env_shards: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    max_restarts: int = 3
    max_task_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers}: use 1 (this process) or more Ray workers.")
        if self.env_shards is not None and self.env_shards < 1:
            raise ConfigError(f"env_shards={self.env_shards}: use 1 or more (or null: one per worker).")
        if self.cpus_per_worker <= 0 or (self.gpus_per_worker is not None and self.gpus_per_worker < 0):
            raise ConfigError("cpus_per_worker must be > 0 and gpus_per_worker >= 0 (or null).")
        if self.max_restarts < -1 or self.max_task_retries < -1:
            raise ConfigError("max_restarts and max_task_retries: -1 (always) or a count >= 0.")

    @property
    def distributed(self) -> bool:
        """Whether the run uses Ray workers."""
        return self.workers > 1 or self.address is not None

    @property
    def shards(self) -> int:
        """Sub-batches of the environment: ``env_shards``, else one per worker."""
        return self.env_shards if self.env_shards is not None else self.workers


@dataclass
class TrainConfig:
    """Everything ``train_agent.py`` needs: environment, agent, evaluation, checkpoints, tracking and workers."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.agent.num_envs % self.env.group_rollouts:
            raise ConfigError(
                f"agent.num_envs={self.agent.num_envs} is not a multiple of env.group_rollouts="
                f"{self.env.group_rollouts}: each draw runs group_rollouts times in one batch; change either."
            )
        try:
            check_shard_split(self.agent.num_envs, self.ray.shards, self.env.group_rollouts)
        except ValueError as error:
            raise ConfigError(
                f"agent.num_envs, ray.env_shards (default: one per ray.workers) and env.group_rollouts: {error}"
            ) from None
        warm = self.warm_start
        if warm.enabled and not self.env.budget_conditioned and len(warm.budgets) != 1:
            raise ConfigError(
                f"warm_start.budgets={warm.budgets}: a policy without a budget (env.budget_conditioned: false) can "
                "follow one schedule only; give one budget, or set warm_start.enabled: false."
            )
        self._check_anchors()

    def _check_anchors(self) -> None:
        """The teacher's anchors must lie among the settings the environment trains on."""
        low, high = self.env.steps_range
        for setting in self.warm_start_settings() if self.warm_start.settings is not None else []:
            if not self.env.covers(setting.scheduler, setting.steps):
                raise ConfigError(
                    f"warm_start.settings: {setting.label} lies outside what the environment trains on (schedulers "
                    f"{list(self.env.scheduler_names)}, {low} to {high} steps): widen env.scheduler / "
                    "env.num_inference_steps or drop the anchor."
                )

    def warm_start_settings(self) -> list[SamplingSetting]:
        """The schedulers and step counts the warm start searches and demonstrates its teacher at."""
        if self.warm_start.settings is not None:
            return [parse_setting(label) for label in self.warm_start.settings]
        return [self.warm_start_setting()]

    def warm_start_setting(self) -> SamplingSetting:
        """The scheduler and step count of a warm start at one setting (``warm_start.settings`` unset)."""
        warm, env = self.warm_start, self.env
        return SamplingSetting(
            warm.scheduler if warm.scheduler is not None else env.scheduler_names[0],
            warm.num_inference_steps if warm.num_inference_steps is not None else env.steps_range[1],
        )

    def evaluation_settings(self) -> list[SamplingSetting]:
        """Every scheduler of the environment at every step count of ``eval.steps`` (default: the env's)."""
        low, high = self.env.steps_range
        steps = self.eval.steps if self.eval.steps is not None else [low, high]
        return [SamplingSetting(name, count) for name in self.env.scheduler_names for count in dict.fromkeys(steps)]

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data."""
        return asdict(self)


def parse_setting(label: str) -> SamplingSetting:
    """Reads ``<scheduler>_<steps>`` (e.g. ``dpmsolver++_20``, ``SamplingSetting.label``'s format).

    Raises:
        ConfigError: For an unknown scheduler or a step count that is not a whole number >= 2.
    """
    scheduler, _, steps = str(label).rpartition("_")
    if scheduler not in SCHEDULER_NAMES or not steps.isdigit() or int(steps) < 2:
        raise ConfigError(
            f"settings: {label!r} is not <scheduler>_<steps> with a scheduler of {list(SCHEDULER_NAMES)} "
            "and a step count >= 2, e.g. ddim_50."
        )
    return SamplingSetting(scheduler, int(steps))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``section.key=value`` (the value as YAML, so ``0.3``, ``true``, ``[1, 2]`` keep their types)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write key=value, e.g. --set agent.total_timesteps=50000.")
    key, value = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set {text!r}: the key is empty.")
    return path, yaml.safe_load(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Reads a YAML config (or the defaults), applies overrides, and validates every field.

    Raises:
        ConfigError: Naming the unknown key, mistyped value or out-of-range field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist.") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(
                f"{path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}."
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (env, agent, ...).")
    for override in overrides or []:
        keys, value = parse_override(override)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: {key} is not a section.")
        node[keys[-1]] = value
    return from_dict(TrainConfig, data)

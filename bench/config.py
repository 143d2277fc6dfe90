"""The benchmark's configuration: ``configs/benchmark.yaml``, its ``quick:`` overrides and the command-line flags.

Every field is validated when the config is built; errors name the field (``methods.fora.intervals[1]``) or the
command-line flag (``--budgets``) that is wrong.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envs.conditions import resolve_prompt_splits
from envs.config import DTYPES, SCHEDULER_NAMES, ConfigError, from_dict
from runtime import EngineOptions
from runtime.budget import check_budgets, is_budget

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "benchmark.yaml"
POLICY_DIR = REPO_ROOT / "assets" / "policies"


def parse_seeds(text: str, name: str = "--seeds") -> list[int]:
    """Parses ``"A-B"`` (both ends included) or a single ``"A"`` into a list of seeds.

    Raises:
        ConfigError: Naming ``name``, if the text is not a range of whole numbers ``0 <= A <= B``.
    """
    parts = str(text).strip().split("-")
    try:
        if len(parts) == 1:
            first = last = int(parts[0])
        elif len(parts) == 2:
            first, last = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{name}={text!r}: give a seed range A-B (both included), e.g. 1000000-1000047.") from None
    if first < 0 or last < first:
        raise ConfigError(f"{name}={text!r}: need 0 <= A <= B.")
    return list(range(first, last + 1))


def parse_classes(text: str, name: str = "--classes") -> list[int]:
    """Parses a comma-separated list of class indices such as ``"7,8,9"``.

    Raises:
        ConfigError: Naming ``name``, if an entry is not a whole number >= 0 or the list is empty.
    """
    try:
        classes = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{name}={text!r}: give comma-separated class indices, e.g. 7,8,9.") from None
    if not classes or min(classes) < 0:
        raise ConfigError(f"{name}={text!r}: give at least one class index >= 0.")
    return classes


def parse_budgets(text: str, name: str = "--budgets") -> list[float]:
    """Parses a comma-separated list of compute budgets (fractions in (0, 1]) such as ``"0.2,0.25,0.33,0.5"``.

    Raises:
        ConfigError: Naming ``name``, if an entry is not a number in (0, 1] or the list is empty.
    """
    try:
        budgets = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(
            f"{name}={text!r}: give comma-separated compute fractions in (0, 1], e.g. 0.25,0.5."
        ) from None
    if not budgets or not all(is_budget(b) for b in budgets):
        raise ConfigError(f"{name}={text!r}: every budget is a compute fraction in (0, 1], e.g. 0.25 for 4x.")
    return budgets


def _check_positive_ints(name: str, values: list[int], minimum: int = 1) -> None:
    bad = [v for v in values if v < minimum]
    if bad:
        raise ConfigError(f"{name}={values}: every entry must be a whole number >= {minimum}.")


def _check_non_negative(name: str, values: list[float]) -> None:
    if any(v < 0 for v in values):
        raise ConfigError(f"{name}={values}: every threshold must be >= 0.")


@dataclass
class IntervalGrid:
    """A method swept over its compute interval.

    Attributes:
        intervals: Compute every N steps, for each N listed (empty: skip the method).
    """

    intervals: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])

    def __post_init__(self) -> None:
        _check_positive_ints("intervals", self.intervals)


@dataclass
class ThresholdGrid:
    """A method swept over its change threshold.

    Attributes:
        thresholds: Largest change that still reuses, for each value listed (empty: skip the method).
    """

    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])

    def __post_init__(self) -> None:
        _check_non_negative("thresholds", self.thresholds)


@dataclass
class TaylorSeerGrid:
    """The engine's TaylorSeer, swept over interval × order.

    Attributes:
        intervals: Compute every N steps.
        orders: Taylor orders (1 to 3).
        warmup: Steps computed in full at the start of each generation.
    """

    intervals: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    orders: list[int] = field(default_factory=lambda: [1, 2])
    warmup: int = 0

    def __post_init__(self) -> None:
        _check_positive_ints("intervals", self.intervals)
        if any(not 1 <= o <= 3 for o in self.orders):
            raise ConfigError(f"orders={self.orders}: use 1, 2 or 3.")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup}: must be >= 0.")


@dataclass
class DeltaDiTGrid:
    """Δ-DiT, swept over interval × span.

    Attributes:
        intervals: Compute interval of the cached groups.
        spans: Fraction of the groups cached in each phase, in (0, 1].
        boundary: Normalised diffusion time where the rear-then-front phases switch.
    """

    intervals: list[int] = field(default_factory=lambda: [2, 3, 4, 6])
    spans: list[float] = field(default_factory=lambda: [0.5, 1.0])
    boundary: float = 0.5

    def __post_init__(self) -> None:
        _check_positive_ints("intervals", self.intervals)
        if any(not 0.0 < s <= 1.0 for s in self.spans):
            raise ConfigError(f"spans={self.spans}: every span is a fraction of the groups in (0, 1].")
        if not 0.0 < self.boundary < 1.0:
            raise ConfigError(f"boundary={self.boundary}: a normalised time strictly between 0 and 1.")


@dataclass
class DiffusersTaylorSeerGrid:
    """diffusers' ``TaylorSeerCacheConfig``, swept over ``cache_interval`` × ``max_order``.

    Attributes:
        intervals: ``cache_interval`` values.
        orders: ``max_order`` values.
        disable_cache_before_step: Steps computed in full first (diffusers' default 3).
        factors_dtype: dtype of the stored Taylor factors, ``"float32"`` or ``"bfloat16"`` (diffusers' default).
    """

    intervals: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    orders: list[int] = field(default_factory=lambda: [1, 2])
    disable_cache_before_step: int = 3
    factors_dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_positive_ints("intervals", self.intervals)
        _check_positive_ints("orders", self.orders)
        if self.disable_cache_before_step < 0:
            raise ConfigError(f"disable_cache_before_step={self.disable_cache_before_step}: must be >= 0.")
        if self.factors_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"factors_dtype={self.factors_dtype!r}: use 'float32', 'bfloat16' or 'float16'.")


@dataclass
class MagCacheGrid:
    """diffusers' ``MagCacheConfig``: calibrated on one sample, then swept over ``threshold`` × ``max_skip_steps``.

    Attributes:
        thresholds: Accumulated-error thresholds.
        max_skip_steps: Most consecutive skipped steps (K) values; diffusers' default 3 caps the speedup near
            ``1 / (retention_ratio + (1 - retention_ratio) / (K + 1))``.
        retention_ratio: Fraction of the first steps that never skip.
        calibration_seed: Seed of the one calibration sample (by default a training seed, not an evaluation one).
        calibration_class: Its class (``None``: the first benchmark class).
    """

    thresholds: list[float] = field(default_factory=lambda: [0.03, 0.06, 0.12, 0.24, 0.5])
    max_skip_steps: list[int] = field(default_factory=lambda: [3, 6])
    retention_ratio: float = 0.2
    calibration_seed: int = 0
    calibration_class: int | None = None

    def __post_init__(self) -> None:
        _check_non_negative("thresholds", self.thresholds)
        _check_positive_ints("max_skip_steps", self.max_skip_steps)
        if not 0.0 <= self.retention_ratio < 1.0:
            raise ConfigError(f"retention_ratio={self.retention_ratio}: a fraction in [0, 1).")


@dataclass
class LearnedGrid:
    """The learned policy.

    Attributes:
        policy: Exported ``.safetensors`` policy (``None``: ``assets/policies/<model>.safetensors`` if it exists).
        budgets: Compute budgets (target compute fractions) to evaluate it at.
        shared_decisions: Also evaluate it with one decision per group for the whole batch (the samples'
            majority), which turns saved FLOPs into saved time on models whose blocks cost mostly per call.
        static_replay: Also evaluate its static replay at each budget: the majority schedule of its own decisions on
            the benchmark's samples, played for all of them (see ``bench.replay``).
    """

    policy: str | None = None
    budgets: list[float] = field(default_factory=lambda: [0.2, 0.25, 0.33, 0.5])
    shared_decisions: bool = False
    static_replay: bool = True

    def __post_init__(self) -> None:
        if self.budgets:  # none: no learned rows
            check_budgets(self.budgets, "budgets", ConfigError)


@dataclass
class OracleConfig:
    """The per-sample oracle: a schedule searched for each of the first ``samples`` samples alone, against its
    uncached output (an upper bound, not a causal policy; see ``bench.oracle``).

    Attributes:
        samples: Samples it is searched on, the benchmark's first ones (0: no oracle rows).
        budgets: Compute budgets (``None``: the learned policy's).
        sweeps: Passes of the search (``ScheduleSearch.search_per_sample``).
        workers: Processes searching the budgets in parallel (after the timing rounds, so they do not disturb them).
    """

    samples: int = 0
    budgets: list[float] | None = None
    sweeps: int = 2
    workers: int = 1

    def __post_init__(self) -> None:
        if self.samples < 0 or self.sweeps < 1 or self.workers < 1:
            raise ConfigError(
                f"samples={self.samples}, sweeps={self.sweeps}, workers={self.workers}: need samples >= 0 (0: off), "
                "sweeps >= 1 and workers >= 1."
            )
        if self.budgets:  # None: the learned policy's
            check_budgets(self.budgets, "budgets", ConfigError)


@dataclass
class MethodsConfig:
    """The methods and their knob grids; an empty grid skips a method.

    Attributes:
        always_compute: Include the engine with ``AlwaysCompute`` (flops 1×; its wall speedup is the engine's
            overhead).
        fora: The engine's FORA.
        first_block: The engine's FirstBlockThreshold on the probe-residual change (FirstBlockCache's rule).
        teacache: The engine's FirstBlockThreshold on the accumulated input change (TeaCache's rule, no polynomial).
        taylorseer: The engine's TaylorSeer.
        delta_dit: The engine's Δ-DiT.
        diffusers_first_block: diffusers' ``FirstBlockCacheConfig``.
        diffusers_taylorseer: diffusers' ``TaylorSeerCacheConfig``.
        diffusers_magcache: diffusers' ``MagCacheConfig``.
        learned: The learned policy.
    """

    always_compute: bool = True
    fora: IntervalGrid = field(default_factory=IntervalGrid)
    first_block: ThresholdGrid = field(default_factory=ThresholdGrid)
    teacache: ThresholdGrid = field(default_factory=ThresholdGrid)
    taylorseer: TaylorSeerGrid = field(default_factory=TaylorSeerGrid)
    delta_dit: DeltaDiTGrid = field(default_factory=DeltaDiTGrid)
    diffusers_first_block: ThresholdGrid = field(default_factory=ThresholdGrid)
    diffusers_taylorseer: DiffusersTaylorSeerGrid = field(default_factory=DiffusersTaylorSeerGrid)
    diffusers_magcache: MagCacheGrid = field(default_factory=MagCacheGrid)
    learned: LearnedGrid = field(default_factory=LearnedGrid)


@dataclass
class BenchmarkConfig:
    """What is generated, how it is measured, and which methods are swept.

    Attributes:
        model: A shipped model name, a local pipeline folder or a hub id.
        scheduler: ``"default"`` (the model's) or a name of ``envs.config.SCHEDULERS`` (``"ddim"``, ...).
        steps: Denoising steps (``None``: the pipeline's default).
        guidance: Classifier-free guidance scale (``None``: the pipeline's default).
        seeds: Seed range ``"A-B"``, both ends included; one sample per seed.
        classes: Class labels, assigned to the seeds in turn (class-conditional models).
        prompts: Prompts of a text-to-image or text-to-video model (as ``env.prompts`` of training: a file, a list, or
            ``{train, eval, test}``); the benchmark draws the test split, assigned to the seeds in turn.
        negative_prompt: Negative prompt under guidance (``None``: the empty prompt).
        pipeline_kwargs: Extra arguments of every pipeline call (``height``, ``width``, ``num_frames``, ...).
        embeddings: A ``.safetensors`` file of precomputed prompt embeddings.
        embedding_cache_dir: Folder to keep encoded prompts on disk, or ``None``.
        device: Where the pipeline runs (``"cpu"``, ``"cuda"``, ...).
        dtype: Weights' dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        repeats: Timing rounds over every knob, uncached runs interleaved (see ``runner``); the wall speedup is the
            median of a knob's ratios over the rounds.
        warmup_steps: Steps of the untimed warm-up generation of each knob.
        psnr_cap: PSNR (dB) given to identical images.
        groups: Block groups of the engine's hand-designed policies.
        probe_blocks: Always-computed front blocks of the engine's hand-designed policies (these two make
            :attr:`engine_options`; the learned policy runs with its own).
        targets: FLOP speedups at which the summary compares the learned policy with the best other method.
        flops_check: Count one engine method's FLOPs with ``FlopCounterMode`` too and report the agreement.
        threads: torch CPU threads (``None``: torch's default). On a busy machine 1 avoids threads waiting on each
            other, which otherwise dominates the time of these small models.
        keep_freed_memory: Keep freed memory in the process (``runtime.allocator.keep_freed_memory``), as jemalloc
            and tcmalloc do: with glibc's defaults, cached generations fault their activation memory back in at
            computed steps, which spreads their wall-clock ratio by ±5–10% from one process to the next.
        wandb_project: W&B project the results are logged to.
        methods: Methods and knob grids.
        oracle: The per-sample oracle rows (off unless ``oracle.samples`` is set).
    """

    model: str = "mini-dit-digits"
    scheduler: str = "default"
    steps: int | None = None
    guidance: float | None = None
    seeds: str = "1000000-1000035"
    classes: list[int] = field(default_factory=lambda: [7, 8, 9])
    prompts: str | list[str] | dict[str, Any] | None = None
    negative_prompt: str | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    embeddings: str | None = None
    embedding_cache_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 3
    warmup_steps: int = 2
    psnr_cap: float = 60.0
    groups: int = 4
    probe_blocks: int = 1
    targets: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0])
    flops_check: bool = True
    threads: int | None = 1
    keep_freed_memory: bool = True
    wandb_project: str = "cachepilot"
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)

    def __post_init__(self) -> None:
        parse_seeds(self.seeds, "seeds")
        parse_classes(",".join(str(c) for c in self.classes), "classes")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ConfigError(f"guidance={self.guidance}: a guidance scale is a finite number >= 0.")
        if self.steps is not None and self.steps < 2:
            raise ConfigError(f"steps={self.steps}: use at least 2 denoising steps.")
        if self.scheduler not in SCHEDULER_NAMES:
            raise ConfigError(f"scheduler={self.scheduler!r}: use one of {list(SCHEDULER_NAMES)}.")
        if self.repeats < 1:
            raise ConfigError(f"repeats={self.repeats}: time at least one pair.")
        if self.warmup_steps < 1:
            raise ConfigError(f"warmup_steps={self.warmup_steps}: must be >= 1.")
        if self.psnr_cap <= 0:
            raise ConfigError(f"psnr_cap={self.psnr_cap}: must be > 0 dB.")
        try:
            _ = self.engine_options  # checks groups and probe_blocks
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}: use at least 1, or null for torch's default.")
        if any(not (math.isfinite(t) and t > 1.0) for t in self.targets):
            raise ConfigError(f"targets={self.targets}: every target is a FLOP speedup > 1.")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r}: use one of {list(DTYPES)} (--dtype).")
        if not isinstance(self.pipeline_kwargs, dict):
            raise ConfigError(f"pipeline_kwargs={self.pipeline_kwargs!r}: give a mapping of call arguments.")
        self.prompts = resolve_prompt_splits(self.prompts, "prompts")

    @property
    def engine_options(self) -> EngineOptions:
        """The engine options of the hand-designed policies: ``groups`` and ``probe_blocks``."""
        return EngineOptions(groups=self.groups, probe_blocks=self.probe_blocks)

    @property
    def seed_list(self) -> list[int]:
        """The seeds, one sample each."""
        return parse_seeds(self.seeds, "seeds")

    @property
    def conditions(self) -> list[int | str]:
        """The condition of each sample: the test prompts (or else the classes) in turn over the seeds."""
        pool = self.prompts["test"] if self.prompts is not None else self.classes
        return [pool[i % len(pool)] for i in range(len(self.seed_list))]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for results.json and the W&B run config)."""
        return asdict(self)


def load_config(
    path: str | Path | None = None, *, quick: bool = False, overrides: dict[str, Any] | None = None
) -> BenchmarkConfig:
    """Reads a benchmark YAML file, applies its ``quick:`` section if asked, then ``overrides``; validates it all.

    Args:
        path: The YAML file (``None``: ``configs/benchmark.yaml``); missing fields take the dataclass defaults.
        quick: Merge the file's ``quick:`` mapping over the rest (fewer seeds, knobs and repeats).
        overrides: Field values set last, as nested mappings (e.g. ``{"methods": {"learned": {"budgets": [0.5]}}}``).

    Returns:
        The validated config.

    Raises:
        ConfigError: For an unknown key or a bad value, naming the field.
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"Benchmark config {path} does not exist; pass --config with a YAML file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {getattr(error, 'problem', None) or error}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of benchmark fields.")
    quick_data = data.pop("quick", None)
    if quick_data is not None and not isinstance(quick_data, dict):
        raise ConfigError(f"{path}: quick must be a mapping of the fields --quick changes, got {quick_data!r}.")
    if quick:
        if not quick_data:
            raise ConfigError(f"--quick: {path} has no quick: section; add one or run without --quick.")
        data = merge(data, quick_data)
    data = merge(data, overrides or {})
    if isinstance(data.get("seeds"), int) and not isinstance(data["seeds"], bool):  # one seed, as --seeds A takes
        data["seeds"] = str(data["seeds"])
    return from_dict(BenchmarkConfig, data)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, mapping by mapping (``update`` wins; neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def default_policy_path(model: str) -> Path:
    """``assets/policies/<model name>.safetensors``, where training exports a model's policy."""
    return POLICY_DIR / f"{Path(str(model)).name}.safetensors"

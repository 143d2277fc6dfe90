"""Loading a pipeline, and calling it for given conditions and seeds: the one layer every caller goes through.

:class:`Sampler` wraps a pipeline with its family (:mod:`envs.families`) and prompt encoder
(:mod:`envs.conditions`); :func:`generate` calls it for conditions (class labels or prompts) and seeds, one CPU
generator per seed, so that a sample is the same alone or in any batch and on any device. The environment, the
schedule search, evaluation, the benchmark and ``generate.py`` all generate through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from zoo import load_pipeline
from zoo.sampling import scheduler_from_config

from .conditions import Condition, PromptEncoder
from .config import DTYPES as DTYPE_NAMES
from .config import SCHEDULERS
from .families import PipelineFamily, family_of

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""The torch dtype of each name a config or ``--dtype`` accepts (:data:`envs.config.DTYPES`)."""


def torch_dtype(name: str, flag: str = "dtype") -> torch.dtype:
    """The torch dtype of ``"float32"``, ``"bfloat16"`` or ``"float16"``.

    Raises:
        ValueError: Naming ``flag``, for any other name.
    """
    if name not in DTYPES:
        raise ValueError(f"{flag}={name!r} is not a dtype: use {', '.join(DTYPES)}.")
    return DTYPES[name]


def prepare_pipeline(
    model: str | DiffusionPipeline,
    scheduler: str = "default",
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> DiffusionPipeline:
    """Loads ``model`` (or takes a loaded pipeline), switches its scheduler, and silences its progress bar.

    Args:
        model: A shipped name, a ``save_pretrained`` folder, a hub id, or a loaded pipeline.
        scheduler: ``"default"`` or a name of :data:`envs.config.SCHEDULERS`.
        device: Where to move the pipeline (``None``: leave a loaded pipeline where it is; load onto the CPU).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: ``torch_dtype`` of a pipeline loaded here (a loaded
            pipeline is left as it is).
    """
    if isinstance(model, (str, Path)):
        pipe = load_pipeline(str(model), torch_dtype=torch_dtype(dtype))
    else:
        pipe = model
    if device is not None:
        pipe.to(device)
    if scheduler != "default":
        options = {"algorithm_type": "dpmsolver++"} if scheduler == "dpmsolver++" else {}
        pipe.scheduler = scheduler_from_config(SCHEDULERS[scheduler], pipe.scheduler.config, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(pipe: DiffusionPipeline) -> dict[str, Any]:
    """What identifies a pipeline's trajectories: transformer and scheduler class and config."""
    return {
        "transformer": type(pipe.transformer).__name__,
        "transformer_config": dict(pipe.transformer.config),
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": dict(pipe.scheduler.config),
    }


def weights_fingerprint(module: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes, dtypes and an evenly spaced sample of values.

    Tells apart checkpoints that share a config (a retrained or fine-tuned model) without reading every weight
    of a large model.
    """
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // samples_per_tensor)][:samples_per_tensor]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def pipeline_class(model: str) -> type | None:
    """A model's pipeline class, read from its ``model_index.json`` without loading weights (``None`` when there is
    no index to read, e.g. a hub id offline, or the class is unknown)."""
    import diffusers

    from zoo.registry import PIPELINE_CLASSES, SHIPPED_MODELS, model_path

    try:
        folder = model_path(model) if model in SHIPPED_MODELS else model
        name = DiffusionPipeline.load_config(str(folder)).get("_class_name", "")
    except Exception:  # noqa: BLE001 - no index to read: the caller's defaults stay
        return None
    return PIPELINE_CLASSES.get(name) or getattr(diffusers, name, None)


def check_conditioning(config: Any) -> None:
    """Checks, before loading any weights, that a configuration gives the conditions its model takes.

    Raises:
        ConfigError: For a pipeline no family covers, a text model without prompts, or prompts for a
            class-conditional model (naming the flag that fixes it).
    """
    from .config import ConfigError
    from .families import family_of_class

    found = pipeline_class(str(config.model))
    if found is None:
        return  # checked again once the pipeline is loaded (make_sampler)
    try:
        family = family_of_class(found)
    except ValueError as error:
        raise ConfigError(f"model {config.model}: {error}") from None
    check_prompts(f"{found.__name__} ({family.name})", family, config.prompts)


def check_prompts(name: str, family: PipelineFamily, prompts: Any) -> None:
    """Raises a ``ConfigError`` naming the fix when ``prompts`` (``None`` or splits) do not suit ``family``."""
    from .config import ConfigError

    if family.takes_prompts and prompts is None:
        raise ConfigError(
            f"prompts: {name} is conditioned on text, so it needs prompts: pass --prompts prompts.txt (one a line) or "
            "set env.prompts (a file, a list, or {train: ..., eval: ..., test: ...})."
        )
    if not family.takes_prompts and prompts is not None:
        raise ConfigError(
            f"prompts: {name} is conditioned on class labels, not prompts: drop --prompts / env.prompts and set "
            "env.train_classes / env.eval_classes."
        )


def call_defaults(model: str) -> dict[str, Any]:
    """``num_inference_steps`` and ``guidance_scale`` defaults of a model's pipeline class, read from its
    ``model_index.json`` without loading weights (``{}`` when the class cannot be found)."""
    found = pipeline_class(model)
    if found is None:
        return {}
    parameters = inspect.signature(found.__call__).parameters
    return {
        key: parameters[key].default
        for key in ("num_inference_steps", "guidance_scale")
        if key in parameters and parameters[key].default is not inspect.Parameter.empty
    }


class Sampler:
    """A pipeline with what it takes to call it for a list of conditions: its family and prompt embeddings.

    Args:
        pipe: The pipeline (any registered family, see :func:`envs.families.family_of`).
        family: Its family (default: looked up by the pipeline's class).
        call_kwargs: Arguments added to every ``__call__`` (e.g. ``height``, ``width``, ``num_frames``,
            ``true_cfg_scale``, ``max_sequence_length``); a ``negative_prompt`` among them is taken as
            ``negative_prompt``.
        negative_prompt: The negative prompt under guidance (``None``: the empty prompt).
        embedding_cache_dir: Folder to keep prompt embeddings on disk, or ``None``.
        embeddings: A file of precomputed prompt embeddings (see :class:`envs.conditions.PromptEncoder`).
    """

    def __init__(
        self,
        pipe: Any,
        family: PipelineFamily | None = None,
        *,
        call_kwargs: dict[str, Any] | None = None,
        negative_prompt: str | None = None,
        embedding_cache_dir: str | Path | None = None,
        embeddings: str | Path | None = None,
    ) -> None:
        self.pipe = pipe
        self.family = family or family_of(pipe)
        call_kwargs = dict(call_kwargs or {})
        # A negative prompt among the call arguments is encoded once like the prompts: the pipeline is given its
        # embeddings, and diffusers refuses a negative prompt beside negative embeddings.
        given = call_kwargs.pop("negative_prompt", None) if self.family.takes_prompts else None
        if given is not None and negative_prompt is not None and given != negative_prompt:
            raise ValueError(
                f"negative prompt given twice: {negative_prompt!r} (negative_prompt) and {given!r} (in the "
                "pipeline's call arguments); keep one (env.negative_prompt in a config)."
            )
        self.call_kwargs = {**self.family.call_defaults, **call_kwargs}
        self.negative_prompt = negative_prompt or given or ""
        self.encoder: PromptEncoder | None = None
        if self.family.takes_prompts:
            length = self.call_kwargs.get("max_sequence_length", self.default("max_sequence_length"))
            self.encoder = PromptEncoder(pipe, self.family, int(length or 128), embedding_cache_dir, embeddings)

    @property
    def transformer(self) -> torch.nn.Module:
        """The pipeline's transformer (where the cache engine goes)."""
        return self.pipe.transformer

    @property
    def scheduler(self) -> Any:
        """The pipeline's scheduler."""
        return self.pipe.scheduler

    def default(self, name: str) -> Any:
        """The default of argument ``name`` of the pipeline's ``__call__``, or ``None``."""
        parameter = inspect.signature(self.pipe.__call__).parameters.get(name)
        return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default

    def check_conditions(self, conditions: Sequence[Condition], what: str = "conditions") -> None:
        """Checks that the conditions are of the kind the pipeline takes.

        Raises:
            ValueError: Naming ``what``: prompts for a class-conditional pipeline or class labels for a text one.
        """
        wanted = str if self.family.takes_prompts else int
        wrong = [c for c in conditions if not isinstance(c, wanted) or isinstance(c, bool)]
        if wrong:
            kind = "prompts" if self.family.takes_prompts else "class labels"
            given = "class labels" if isinstance(wrong[0], int) else "prompts"
            raise ValueError(
                f"{what}: {type(self.pipe).__name__} ({self.family.name}) takes {kind}, got {given} "
                f"(e.g. {wrong[0]!r}); " + ("give prompts (--prompts FILE)." if wanted is str else "give --classes.")
            )

    def condition_kwargs(self, conditions: Sequence[Condition], guidance_scale: float) -> dict[str, Any]:
        """The conditioning arguments of a call for ``conditions`` (class labels, or prompt embeddings)."""
        self.check_conditions(conditions)
        if not self.family.takes_prompts:
            return {"class_labels": [int(c) for c in conditions]}
        kwargs = self.encoder.get([str(c) for c in conditions])
        if self.family.uses_negative(guidance_scale, self.call_kwargs):
            negative = self.encoder.get([self.negative_prompt])
            kwargs.update({f"negative_{k}": v.expand(len(conditions), *v.shape[1:]) for k, v in negative.items()})
        device, dtype = self.pipe._execution_device, self.transformer.dtype
        return {k: v.to(device, dtype if v.is_floating_point() else v.dtype) for k, v in kwargs.items()}

    def __call__(
        self,
        conditions: Sequence[Condition],
        seeds: Sequence[int],
        num_inference_steps: int,
        guidance_scale: float,
        latents: list[torch.Tensor] | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Generates one sample per ``(condition, seed)``, each from its own CPU generator.

        Args:
            conditions: Class labels or prompts, one per sample.
            seeds: One seed per sample.
            num_inference_steps: Denoising steps.
            guidance_scale: Guidance scale (for guidance-distilled FLUX, its guidance embedding).
            latents: If given, each step's latents ``(samples, ...)`` are appended to it.
            on_step: Called after each step's scheduler update (every transformer pass of the step has run).

        Returns:
            Images ``(samples, C, H, W)`` or videos ``(samples, F, C, H, W)`` in [0, 1], float32 on the CPU.
        """
        if len(conditions) != len(seeds):
            raise ValueError(f"give one seed per condition: {len(conditions)} conditions, {len(seeds)} seeds.")
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        kwargs = {**self.condition_kwargs(conditions, guidance_scale), **self.call_kwargs}
        with record_latents(self.pipe.scheduler, len(seeds), latents, on_step):
            output = self.pipe(
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pt",
                **kwargs,
            )
        images = output.frames if self.family.output == "frames" else output.images
        return images.detach().to("cpu", torch.float32)


@contextlib.contextmanager
def record_latents(
    scheduler: Any,
    samples: int,
    latents: list[torch.Tensor] | None,
    on_step: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Within this context, every ``scheduler.step`` appends its ``prev_sample`` (first ``samples`` rows) to
    ``latents`` and then calls ``on_step``: per-step latents of any pipeline, with or without
    ``callback_on_step_end``.

    Pipelines that step the doubled guidance batch (``DiTPipeline``) hold the same latents in both halves; the first
    ``samples`` rows are the samples'.
    """
    if latents is None and on_step is None:
        yield
        return
    step = scheduler.step
    shadowed = vars(scheduler).get("step")  # an instance attribute already wrapping ``step``, if any

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        output = step(*args, **kwargs)
        sample = output[0] if isinstance(output, tuple) else output.prev_sample
        if latents is not None:
            latents.append(sample[:samples].detach().to("cpu", torch.float32).clone())
        if on_step is not None:
            on_step()
        return output

    scheduler.step = recording_step
    try:
        yield
    finally:
        if shadowed is None:
            del scheduler.step  # the class's method again
        else:
            scheduler.step = shadowed


def make_sampler(config: Any, pipe: Any = None, scheduler: str | None = None) -> Sampler:
    """The sampler an environment configuration describes (``pipe``: a loaded pipeline or sampler to use instead).

    Args:
        config: An :class:`envs.config.EnvConfig` (model, scheduler, device, dtype, prompts, call arguments).
        pipe: A pipeline or :class:`Sampler` to use instead of loading ``config.model``.
        scheduler: The scheduler to set (default: ``config.scheduler`` when it names one, else the pipeline's own,
            for callers that switch schedulers per batch with :class:`envs.schedulers.SchedulerSwitch`).

    Raises:
        ConfigError: For a text model without prompts, or prompts for a class-conditional model.
    """
    from .config import ConfigError

    if scheduler is None:
        scheduler = config.scheduler if isinstance(config.scheduler, str) else "default"
    if isinstance(pipe, Sampler):
        sampler = pipe
        prepare_pipeline(sampler.pipe, scheduler, config.device)
    else:
        loaded = prepare_pipeline(pipe if pipe is not None else config.model, scheduler, config.device, config.dtype)
        try:
            family = family_of(loaded)
        except ValueError as error:
            raise ConfigError(f"model {config.model}: {error}") from None
        sampler = Sampler(
            loaded,
            family,
            call_kwargs=config.pipeline_kwargs,
            negative_prompt=config.negative_prompt,
            embedding_cache_dir=config.embedding_cache_dir,
            embeddings=config.embeddings,
        )
    check_prompts(f"{type(sampler.pipe).__name__} ({sampler.family.name})", sampler.family, config.prompts)
    return sampler


def as_sampler(pipe: Any) -> Sampler:
    """``pipe`` if it is a :class:`Sampler`, else a sampler with default settings around the pipeline."""
    return pipe if isinstance(pipe, Sampler) else Sampler(pipe)


def generate(
    pipe: Any,
    conditions: Sequence[Condition],
    seeds: Sequence[int],
    num_inference_steps: int,
    guidance_scale: float,
    latents: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Runs an unmodified pipeline (or a :class:`Sampler`) for ``conditions`` and ``seeds``; see
    :meth:`Sampler.__call__`."""
    return as_sampler(pipe)(conditions, seeds, num_inference_steps, guidance_scale, latents)

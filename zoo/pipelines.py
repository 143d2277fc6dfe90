"""Class-conditional pipelines for the zoo's pixel-space digit models.

Both follow diffusers' conventions (components registered with ``register_modules``, ``save_pretrained`` /
``from_pretrained``, ``progress_bar``, ``callback_on_step_end``) and call the transformer exactly once per step
with the whole batch and a ``timestep`` tensor of the batch size. They differ in how classifier-free guidance
batches its two halves, which is part of each pipeline's contract:

* :class:`MiniDiTPipeline` batches ``[cond, uncond]`` like diffusers' ``DiTPipeline``; the unconditional half uses
  the null class ``transformer.config.num_embeds_ada_norm``.
* :class:`MiniFlowPipeline` batches ``[uncond, cond]`` like the Stable Diffusion 3 pipeline; a class is a one-hot
  prompt embedding and the unconditional half uses all-zero embeddings.

``guidance_scale <= 1`` disables guidance: the batch is not doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, SD3Transformer2DModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

ClassLabels = int | Sequence[int] | torch.Tensor
StepCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]

CFG_ORDER_COND_FIRST = ("cond", "uncond")
CFG_ORDER_UNCOND_FIRST = ("uncond", "cond")


class _DigitsPipelineMixin:
    """Helpers shared by both pipelines (labels, latents, callbacks, output conversion)."""

    _callback_tensor_inputs = ["latents"]
    num_classes: int = 10

    @property
    def guidance_scale(self) -> float:
        """Guidance scale of the current (or last) call."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current call doubles the batch for classifier-free guidance."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Number of denoising steps of the current (or last) call."""
        return self._num_timesteps

    def _labels_tensor(self, class_labels: ClassLabels, device: torch.device) -> torch.Tensor:
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels).reshape(-1).long()
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"class_labels must be digits in [0, {self.num_classes - 1}], got {labels.tolist()}.")
        return labels.to(device)

    def _check_callback_inputs(self, names: Sequence[str]) -> None:
        unknown = [k for k in names if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}; got {unknown}."
            )

    def _device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Looked up once per call: both properties walk every module of the transformer."""
        return self._execution_device, self.transformer.dtype

    def _prepare_latents(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        size = self.transformer.config.sample_size
        shape = (batch_size, self.transformer.config.in_channels, size, size)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _run_callback(
        self, callback: StepCallback | None, names: Sequence[str], i: int, t: torch.Tensor, latents: torch.Tensor
    ) -> torch.Tensor:
        if callback is None:
            return latents
        outputs = callback(self, i, t, {"latents": latents} if "latents" in names else {})
        return outputs.pop("latents", latents) if outputs else latents

    def _finish(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        images: Any = (latents.float() / 2 + 0.5).clamp(0, 1)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy().astype(np.float32)
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


class MiniDiTPipeline(_DigitsPipelineMixin, DiffusionPipeline):
    """Class-conditional pixel-space DiT sampling (ε-prediction), CFG batch order ``[cond, uncond]``.

    Args:
        transformer: A ``DiTTransformer2DModel`` whose ``num_embeds_ada_norm`` is the number of classes; that index
            is the null class.
        scheduler: Any ε-prediction scheduler, e.g. ``DDIMScheduler`` or ``DPMSolverMultistepScheduler``.
    """

    model_cpu_offload_seq = "transformer"
    cfg_order = CFG_ORDER_COND_FIRST

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: KarrasDiffusionSchedulers) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
        self.num_classes = transformer.config.num_embeds_ada_norm

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        """Generates one 16×16 digit per entry of ``class_labels``.

        Args:
            class_labels: Digit(s) to draw, 0–9.
            num_inference_steps: Denoising steps.
            guidance_scale: Classifier-free guidance scale; ``<= 1`` disables guidance.
            generator: Generator(s) for the initial noise (and stochastic schedulers).
            output_type: ``"pil"``, ``"np"`` (B, H, W, 1) or ``"pt"`` (B, 1, H, W); values in [0, 1].
            return_dict: Return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: ``callback(pipe, step_index, timestep, tensors) -> dict`` run after each step;
                a returned ``"latents"`` replaces the current latents.
            callback_on_step_end_tensor_inputs: Tensors passed to the callback (only ``"latents"``).

        Returns:
            ``ImagePipelineOutput`` with ``images``, or ``(images,)``.
        """
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        device, dtype = self._device_and_dtype()
        labels = self._labels_tensor(class_labels, device)
        batch_size = labels.shape[0]
        latents = self._prepare_latents(batch_size, generator, device, dtype)
        if self.do_classifier_free_guidance:
            null = torch.full_like(labels, self.transformer.config.num_embeds_ada_norm)
            labels_input = torch.cat([labels, null])
        else:
            labels_input = labels

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        channels = self.transformer.config.in_channels
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                t_batch = t.to(device).reshape(1).expand(model_input.shape[0])
                noise_pred = self.transformer(model_input, timestep=t_batch, class_labels=labels_input).sample
                noise_pred = noise_pred[:, :channels]
                if self.do_classifier_free_guidance:
                    cond, uncond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
                latents = self._run_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents)
                progress_bar.update()
        return self._finish(latents, output_type, return_dict)


class MiniFlowPipeline(_DigitsPipelineMixin, DiffusionPipeline):
    """Class-conditional pixel-space rectified-flow sampling (SD3 transformer), CFG batch order ``[uncond, cond]``.

    A digit ``c`` is presented as ``encoder_hidden_states`` of one token, the one-hot vector ``e_c`` of size
    ``joint_attention_dim``, and ``pooled_projections`` = one-hot of size ``pooled_projection_dim``. The
    unconditional input is all zeros.

    Args:
        transformer: An ``SD3Transformer2DModel`` predicting the flow velocity ``noise - data``.
        scheduler: A ``FlowMatchEulerDiscreteScheduler``.
    """

    model_cpu_offload_seq = "transformer"
    cfg_order = CFG_ORDER_UNCOND_FIRST

    def __init__(self, transformer: SD3Transformer2DModel, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    def encode_labels(
        self, labels: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot prompt embeddings ``(B, 1, joint_attention_dim)`` and pooled ``(B, pooled_projection_dim)``."""
        return one_hot_condition(labels, self.transformer.config, dtype=dtype or self.transformer.dtype)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        num_inference_steps: int = 28,
        guidance_scale: float = 2.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        """Generates one 16×16 digit per entry of ``class_labels``; arguments as in :class:`MiniDiTPipeline`."""
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        self._guidance_scale = guidance_scale
        device, dtype = self._device_and_dtype()
        labels = self._labels_tensor(class_labels, device)
        latents = self._prepare_latents(labels.shape[0], generator, device, dtype)
        prompt_embeds, pooled = self.encode_labels(labels, dtype)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([torch.zeros_like(prompt_embeds), prompt_embeds])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if self.do_classifier_free_guidance else latents
                t_batch = t.to(device).reshape(1).expand(model_input.shape[0])
                velocity = self.transformer(
                    hidden_states=model_input,
                    encoder_hidden_states=prompt_embeds,
                    pooled_projections=pooled,
                    timestep=t_batch,
                ).sample
                if self.do_classifier_free_guidance:
                    uncond, cond = velocity.chunk(2)
                    velocity = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(velocity, t, latents).prev_sample
                latents = self._run_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, latents)
                progress_bar.update()
        return self._finish(latents, output_type, return_dict)


def one_hot_condition(
    labels: torch.Tensor, config: Any, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """Builds the flow model's class condition from integer labels.

    Args:
        labels: Integer tensor (B,); a negative label means "unconditional" and gives all-zero embeddings.
        config: The SD3 transformer's config (for ``joint_attention_dim`` and ``pooled_projection_dim``).
        dtype: Output dtype.

    Returns:
        ``(prompt_embeds, pooled_projections)`` of shapes (B, 1, joint_attention_dim) and (B, pooled_projection_dim).
    """
    keep = (labels >= 0).to(dtype).unsqueeze(-1)
    idx = labels.clamp(min=0)
    prompt = torch.nn.functional.one_hot(idx, config.joint_attention_dim).to(dtype) * keep
    pooled = torch.nn.functional.one_hot(idx, config.pooled_projection_dim).to(dtype) * keep
    return prompt.unsqueeze(1), pooled

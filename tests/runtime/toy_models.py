"""Small models for engine tests: a polynomial-in-time block diffusers' registry is taught about, and a tiny DiT."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DiTTransformer2DModel

from runtime import Action, Observation
from runtime.diffusers_internals import TransformerBlockMetadata, TransformerBlockRegistry


class PolynomialBlock(torch.nn.Module):
    """Adds ``sum_i coefficients[i] * t**i * direction`` to its input: a residual polynomial in time."""

    def __init__(self, coefficients: Sequence[float], width: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("direction", torch.randn(width, generator=generator, dtype=torch.float64))
        self.coefficients = list(coefficients)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.to(torch.float64)[:, None, None]
        value = sum(c * t**i for i, c in enumerate(self.coefficients))
        return hidden_states + value * self.direction


TransformerBlockRegistry.register(PolynomialBlock, TransformerBlockMetadata(return_hidden_states_index=0))


class PolynomialTransformer(torch.nn.Module):
    """A stack of :class:`PolynomialBlock` called like a diffusers transformer."""

    def __init__(self, coefficients: Sequence[float], depth: int = 2, width: int = 8) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(
            PolynomialBlock(coefficients, width, seed) for seed in range(depth)
        )

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, timestep=timestep)
        return hidden_states


class ScriptedPolicy:
    """Plays ``script(step_index, sample_index, group_index) -> Action``, for tests."""

    def __init__(self, script: Callable[[int, int, int], Action], sample_ids: Sequence[int] | None = None) -> None:
        self.script = script
        self.sample_ids = sample_ids
        self.observations: list[Observation] = []

    def act(self, observation: Observation) -> torch.Tensor:
        observation.features  # noqa: B018 (read inside act, so the recorded observation keeps its features)
        self.observations.append(observation)
        ids = self.sample_ids or range(observation.num_samples)
        return torch.tensor(
            [[int(self.script(observation.step_index, s, g)) for g in range(observation.num_groups)] for s in ids]
        )


def tiny_dit(depth: int = 4, seed: int = 0) -> DiTTransformer2DModel:
    """A random class-conditional DiT with DiTPipeline's null class 1000."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=depth,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
    ).eval()


def denoise_dit(
    model: torch.nn.Module, labels: Sequence[int], steps: int = 4, seed: int = 0, cfg: bool = True
) -> torch.Tensor:
    """A deterministic sampler-like loop over decreasing timesteps; returns every step's output, stacked.

    Each sample's latents depend only on its seed offset, so a sample run alone sees the same inputs as in a batch.
    """
    latents = torch.stack(
        [torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(seed + label)) for label in labels]
    )
    classes = torch.tensor(list(labels))
    if cfg:
        latents = torch.cat([latents, latents])
        classes = torch.cat([classes, torch.full_like(classes, 1000)])
    outputs = []
    with torch.no_grad():
        for t in torch.linspace(950, 50, steps).long():
            out = model(latents, timestep=t.expand(latents.shape[0]), class_labels=classes).sample
            latents = latents - 0.05 * out
            outputs.append(out)
    return torch.stack(outputs)

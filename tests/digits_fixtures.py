"""A tiny random stand-in for the shipped digits DiT pipeline (same interface, null class 10, 16×16 pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

from zoo.pipelines import MiniDiTPipeline


def tiny_digits_pipeline(num_layers: int = 5, attention_head_dim: int = 16) -> MiniDiTPipeline:
    """A random 5-block digits DiT with the shipped model's interface; built the same way on every call."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=attention_head_dim,
        in_channels=1,
        out_channels=1,
        num_layers=num_layers,
        sample_size=16,
        patch_size=4,
        num_embeds_ada_norm=10,
        norm_type="ada_norm_zero",
    ).eval()
    return MiniDiTPipeline(transformer=transformer, scheduler=DDIMScheduler(beta_schedule="squaredcos_cap_v2"))


@pytest.fixture(scope="session")
def tiny_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_digits_pipeline` saved with ``save_pretrained``, for tools that take a model folder."""
    folder = tmp_path_factory.mktemp("tiny-digits-dit")
    tiny_digits_pipeline().save_pretrained(folder)
    return folder


ONE_SETTING_CONFIG = Path(__file__).resolve().parent / "one-setting.yaml"
"""``train_agent.py --config`` of the tiny training runs: the dataclass defaults, one sampling setting (the shipped
``configs/default.yaml`` trains across 20 to 50 steps and two schedulers, which a 4-step run does not fit)."""

TINY_WARM_START = [
    "warm_start.budgets=[0.4, 0.6]",
    "warm_start.search_samples=2",
    "warm_start.sweeps=1",
    "warm_start.workers=1",
    "warm_start.demo_samples=4",
    "warm_start.epochs=20",
]
"""``--set`` overrides that keep the warm start (schedule search + behaviour cloning) to a second on the tiny model."""

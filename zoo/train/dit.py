"""Trains ``mini-dit-digits``: a class-conditional DiT, ε-prediction, cosine schedule, pixel space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiTTransformer2DModel
from torch import nn

from zoo.pipelines import MiniDiTPipeline
from zoo.train.common import TrainArgs, drop_labels, train_loop

NUM_CLASSES = 10

TRANSFORMER_CONFIG = {
    "num_attention_heads": 4,
    "attention_head_dim": 24,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 10,
    "sample_size": 16,
    "patch_size": 4,
    "num_embeds_ada_norm": NUM_CLASSES,  # class index 10 is the null (unconditional) class
    "norm_type": "ada_norm_zero",
}

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    # Clip predicted x0 to the data range [-1, 1]. zoo.sampling.scheduler_from_config carries the clipping over to
    # DPM-Solver++ (as thresholding capped at 1), where it keeps the cosine schedule's first steps stable. DDIM's own
    # ``thresholding`` with that cap clips alike but computes a per-image quantile every step.
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "sample_max_value": 1.0,
    "timestep_spacing": "trailing",
}


def build_transformer() -> DiTTransformer2DModel:
    """The untrained transformer, as configured for ``mini-dit-digits``."""
    return DiTTransformer2DModel(**TRANSFORMER_CONFIG)


def build_scheduler() -> DDIMScheduler:
    """The DDIM scheduler shipped with ``mini-dit-digits``."""
    return DDIMScheduler(**SCHEDULER_CONFIG)


def _disable_builtin_label_dropout(model: nn.Module) -> None:
    """Turns off diffusers' own train-mode label dropout so that ``TrainArgs.label_dropout`` is the only one."""
    for module in model.modules():
        if hasattr(module, "dropout_prob") and hasattr(module, "embedding_table"):
            module.dropout_prob = 0.0


def train_dit(args: TrainArgs) -> MiniDiTPipeline:
    """Trains the DiT, saves the EMA pipeline to ``args.out`` and returns it."""
    torch.manual_seed(args.seed)
    transformer = build_transformer()
    _disable_builtin_label_dropout(transformer)
    noise_scheduler = build_scheduler()
    alphas_cumprod = noise_scheduler.alphas_cumprod
    null = transformer.config.num_embeds_ada_norm

    def loss_fn(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = drop_labels(labels, args.label_dropout, null, gen)
        pred = model(xt, timestep=t, class_labels=cond).sample
        return F.mse_loss(pred, noise)

    ema = train_loop(transformer, loss_fn, args, desc="mini-dit-digits")
    pipe = MiniDiTPipeline(transformer=ema, scheduler=noise_scheduler)
    pipe.save_pretrained(str(args.out))
    print(f"saved to {args.out}")
    return pipe


DEFAULT_ARGS = {"steps": 8000, "batch_size": 128, "lr": 6e-4, "warmup": 200, "ema_decay": 0.999, "label_dropout": 0.1}

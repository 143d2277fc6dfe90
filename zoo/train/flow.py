"""Trains ``mini-flow-digits``: a tiny SD3 transformer trained with rectified flow, classes as one-hot prompts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import nn

from zoo.pipelines import MiniFlowPipeline, one_hot_condition
from zoo.train.common import TrainArgs, drop_labels, train_loop

NULL_LABEL = -1  # all-zero prompt embeddings: the unconditional input

TRANSFORMER_CONFIG = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "attention_head_dim": 32,
    "num_attention_heads": 3,
    "joint_attention_dim": 16,
    "caption_projection_dim": 96,  # must equal num_attention_heads * attention_head_dim
    "pooled_projection_dim": 16,
    "pos_embed_max_size": 8,
}

SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 1.0}

DEFAULT_ARGS = {"steps": 8000, "batch_size": 64, "lr": 6e-4, "warmup": 200, "ema_decay": 0.999, "label_dropout": 0.1}


def build_transformer() -> SD3Transformer2DModel:
    """The untrained transformer, as configured for ``mini-flow-digits``."""
    return SD3Transformer2DModel(**TRANSFORMER_CONFIG)


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler shipped with ``mini-flow-digits``."""
    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def train_flow(args: TrainArgs) -> MiniFlowPipeline:
    """Trains the flow model, saves the EMA pipeline to ``args.out`` and returns it.

    Each step draws ``sigma`` from a logit-normal distribution (as in SD3), forms ``x = (1 - sigma) * data +
    sigma * noise`` and regresses the velocity ``noise - data`` at ``timestep = 1000 * sigma``.
    """
    torch.manual_seed(args.seed)
    transformer = build_transformer()
    scheduler = build_scheduler()
    num_train_timesteps = scheduler.config.num_train_timesteps

    def loss_fn(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        prompt, pooled = one_hot_condition(drop_labels(labels, args.label_dropout, NULL_LABEL, gen), model.config)
        pred = model(
            hidden_states=xt,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=sigma * num_train_timesteps,
        ).sample
        return F.mse_loss(pred, noise - x0)

    ema = train_loop(transformer, loss_fn, args, desc="mini-flow-digits")
    pipe = MiniFlowPipeline(transformer=ema, scheduler=scheduler)
    pipe.save_pretrained(str(args.out))
    print(f"saved to {args.out}")
    return pipe

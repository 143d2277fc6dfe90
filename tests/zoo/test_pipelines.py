"""Pipeline contract: loading, CFG batch order, one full-batch transformer call per step, outputs, callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from zoo import MiniDiTPipeline, MiniFlowPipeline
from zoo.registry import model_path

PIPELINES = {"mini-dit-digits": MiniDiTPipeline, "mini-flow-digits": MiniFlowPipeline}


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def pipe(request: pytest.FixtureRequest) -> DiffusionPipeline:
    pipeline = PIPELINES[request.param].from_pretrained(str(model_path(request.param)))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _record_calls(pipeline: DiffusionPipeline) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    calls: list[dict] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"args": args, **kwargs})

    return calls, pipeline.transformer.register_forward_pre_hook(hook, with_kwargs=True)


def _cond_input(pipeline: DiffusionPipeline, call: dict) -> torch.Tensor:
    """Per-sample class identity fed to the transformer: the label, or -1 for unconditional."""
    if isinstance(pipeline, MiniDiTPipeline):
        labels = call["class_labels"].clone()
        labels[labels == pipeline.transformer.config.num_embeds_ada_norm] = -1
        return labels
    embeds = call["encoder_hidden_states"][:, 0]
    return torch.where(embeds.abs().sum(1) > 0, embeds.argmax(1), torch.full_like(embeds[:, 0], -1).long())


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_one_full_batch_call_per_step_and_cfg_order(pipe: DiffusionPipeline, guidance: float) -> None:
    calls, handle = _record_calls(pipe)
    try:
        pipe([3, 7], num_inference_steps=4, guidance_scale=guidance, output_type="pt")
    finally:
        handle.remove()
    assert len(calls) == 4
    cfg = guidance > 1
    batch = 4 if cfg else 2
    for call in calls:
        timestep = call["timestep"]
        assert torch.is_tensor(timestep) and timestep.shape == (batch,)
        assert (timestep == timestep[0]).all()
        cond = _cond_input(pipe, call).tolist()
        if not cfg:
            assert cond == [3, 7]
        elif pipe.cfg_order == ("cond", "uncond"):
            assert isinstance(pipe, MiniDiTPipeline) and cond == [3, 7, -1, -1]
        else:
            assert isinstance(pipe, MiniFlowPipeline) and cond == [-1, -1, 3, 7]
    assert calls[0]["timestep"][0] > calls[-1]["timestep"][0]


def test_output_types_and_range(pipe: DiffusionPipeline) -> None:
    gen = torch.Generator().manual_seed(0)
    pt = pipe([1, 2], num_inference_steps=3, generator=gen, output_type="pt").images
    assert pt.shape == (2, 1, 16, 16) and pt.min() >= 0 and pt.max() <= 1
    arr = pipe([1, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(arr[..., 0], pt[:, 0].numpy(), atol=1e-6)  # same seed, same images
    pil = pipe(5, num_inference_steps=2, output_type="pil").images
    assert pil[0].size == (16, 16)
    (tup,) = pipe(5, num_inference_steps=2, output_type="pt", return_dict=False)
    assert tup.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="digits"):
        pipe([10], num_inference_steps=2)


def test_callback_sees_and_can_replace_latents(pipe: DiffusionPipeline) -> None:
    seen: list[int] = []

    def callback(p: DiffusionPipeline, i: int, t: torch.Tensor, tensors: dict) -> dict:
        seen.append(i)
        assert tensors["latents"].shape == (1, 1, 16, 16)
        return {"latents": torch.zeros_like(tensors["latents"])} if i == p.num_timesteps - 1 else {}

    out = pipe([4], num_inference_steps=3, output_type="pt", callback_on_step_end=callback).images
    assert seen == [0, 1, 2]
    torch.testing.assert_close(out, torch.full_like(out, 0.5))

"""Conditions and pipeline families: prompt files and splits, prompts encoded once (memory, disk, precomputed),
the family registry, per-step latents without ``callback_on_step_end``, and errors naming the fix."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

from envs import CacheScheduleVecEnv
from envs.conditions import condition_key, read_prompts, split_prompts
from envs.config import ConfigError, EnvConfig, from_dict
from envs.families import PipelineFamily, family_of, register_family, unregister_family
from envs.pipelines import Sampler, make_sampler
from tests.tiny_pipelines import build_dit_pipeline, build_text_pipeline, text_call_kwargs

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow star", "a white cat"]


def call_kwargs(family: str) -> tuple[float, dict]:
    kwargs = text_call_kwargs(family)
    return kwargs.pop("guidance_scale"), kwargs


def test_split_is_deterministic_disjoint_and_independent_of_order() -> None:
    prompts = [f"prompt number {i}" for i in range(20)]
    splits = split_prompts(prompts)
    assert [len(splits[s]) for s in ("train", "eval", "test")] == [16, 2, 2]
    assert sorted(sum(splits.values(), [])) == sorted(prompts)
    shuffled = random.Random(0).sample(prompts, len(prompts))
    assert {k: set(v) for k, v in split_prompts(shuffled).items()} == {k: set(v) for k, v in splits.items()}
    with pytest.raises(ConfigError, match="at least three"):
        split_prompts(["one", "two"])


def test_prompt_files_and_explicit_splits(tmp_path: Path) -> None:
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n  a dog \na cat\n")
    assert read_prompts(str(text)) == ["a cat", "a dog"]
    listed = tmp_path / "prompts.yaml"
    listed.write_text("- a fox\n- a hen\n")
    assert read_prompts(str(listed)) == ["a fox", "a hen"]
    config = from_dict(EnvConfig, {"prompts": {"train": str(text), "eval": str(listed)}}, prefix="env.")
    assert config.prompts == {"train": ["a cat", "a dog"], "eval": ["a fox", "a hen"], "test": ["a fox", "a hen"]}
    assert config.conditions("eval") == ["a fox", "a hen"]
    with pytest.raises(ConfigError, match=r"env.prompts.eval shares 1 prompt"):
        from_dict(EnvConfig, {"prompts": {"train": ["a cat", "a dog"], "eval": ["a dog"]}}, prefix="env.")
    with pytest.raises(ConfigError, match=r"env.prompts: prompt file .*missing.txt does not exist"):
        from_dict(EnvConfig, {"prompts": str(tmp_path / "missing.txt")}, prefix="env.")
    listed.write_text("prompt: a fox\n")
    with pytest.raises(ConfigError, match="YAML list"):
        read_prompts(str(listed))
    with pytest.raises(ConfigError, match=r"env.dtype='float8'.*--dtype"):
        from_dict(EnvConfig, {"dtype": "float8"}, prefix="env.")


def test_condition_keys_tell_prompts_and_classes_apart() -> None:
    assert condition_key(3) == "condition3"
    assert condition_key("a cat") == condition_key("a cat") != condition_key("a cat ")
    assert condition_key("a cat").startswith("prompt-") and "/" not in condition_key("a/b")


def test_prompts_are_encoded_once_and_kept_on_disk_by_text_encoder_weights(tmp_path: Path) -> None:
    _, kwargs = call_kwargs("pixart-alpha")
    pipe = build_text_pipeline("pixart-alpha")
    sampler = Sampler(pipe, call_kwargs=kwargs, embedding_cache_dir=tmp_path)
    first = sampler.encoder.get(["a cat", "a dog", "a cat"])
    sampler.encoder.get(["a dog"])
    assert sampler.encoder.encoded == 2
    embeds, mask, _, _ = pipe.encode_prompt(["a dog"], do_classifier_free_guidance=False, max_sequence_length=16)
    torch.testing.assert_close(first["prompt_embeds"][1:2], embeds, atol=1e-5, rtol=0)  # batched vs alone
    assert torch.equal(first["prompt_attention_mask"][1:2], mask)
    assert torch.equal(first["prompt_embeds"][0], first["prompt_embeds"][2])
    again = Sampler(pipe, call_kwargs=kwargs, embedding_cache_dir=tmp_path)
    assert torch.equal(again.encoder.get(["a cat"])["prompt_embeds"], first["prompt_embeds"][:1])
    assert again.encoder.encoded == 0  # read from disk
    with torch.no_grad():
        next(pipe.text_encoder.parameters()).add_(1.0)  # another text encoder: its own entries
    other = Sampler(pipe, call_kwargs=kwargs, embedding_cache_dir=tmp_path)
    other.encoder.get(["a cat"])
    assert other.encoder.encoded == 1


def test_precomputed_embeddings_need_no_text_encoder(tmp_path: Path) -> None:
    guidance, kwargs = call_kwargs("sd3")
    encoded = Sampler(build_text_pipeline("sd3"), call_kwargs=kwargs)
    expected = encoded(["a cat"], [4], 2, guidance)
    tensors = {f"{p}/{k}": v[0] for p in ("a cat", "") for k, v in encoded.encoder.get([p]).items()}
    save_file(tensors, str(tmp_path / "embeddings.safetensors"))
    pipe = build_text_pipeline("sd3")
    pipe.text_encoder = pipe.text_encoder_2 = pipe.text_encoder_3 = None
    given = Sampler(pipe, call_kwargs=kwargs, embeddings=tmp_path / "embeddings.safetensors")
    assert torch.equal(given(["a cat"], [4], 2, guidance), expected)
    assert given.encoder.encoded == 0


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_batched_samples_match_single_ones(family: str) -> None:
    """One CPU generator per seed: a sample is the same alone as in a batch (videos: frames)."""
    guidance, kwargs = call_kwargs(family)
    sampler = Sampler(build_text_pipeline(family), call_kwargs=kwargs)
    latents: list[torch.Tensor] = []
    batch = sampler(["a cat", "a dog"], [1, 2], 2, guidance, latents)
    alone = sampler(["a dog"], [2], 2, guidance)
    assert batch.ndim == (5 if family == "wan" else 4) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=0)
    assert len(latents) == 2 and latents[0].shape[0] == 2
    assert sampler.family.name == family


def test_dit_latents_are_recorded_without_a_step_callback() -> None:
    """DiTPipeline has no callback_on_step_end: the scheduler's steps are recorded, the samples' rows only."""
    pipe = build_dit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    latents: list[torch.Tensor] = []
    images = Sampler(pipe)([1, 2, 3], [0, 1, 2], 3, 4.0, latents)
    assert [tuple(x.shape) for x in latents] == [(3, 4, 8, 8)] * 3
    assert "step" not in vars(pipe.scheduler)  # the scheduler's own step again
    env = CacheScheduleVecEnv(2, {"num_inference_steps": 3, "guidance_scale": 4.0}, pipe=pipe, seed=0)
    env.reset()
    for _ in range(3):
        _, rewards, dones, infos = env.step(np.zeros((2, env.engine.num_groups), dtype=np.int64))
    assert dones.all() and infos[0]["psnr"] == float("inf") and infos[0]["compute_fraction"] == pytest.approx(1.0)
    env.close()
    assert images.shape == (3, 3, 8, 8)


def test_separate_guidance_passes_make_one_decision_per_step() -> None:
    """Wan runs cond and uncond passes: the environment decides once per step, the engine repeats it for uncond."""
    guidance, kwargs = call_kwargs("wan")
    config = {"num_inference_steps": 3, "guidance_scale": guidance, "pipeline_kwargs": kwargs, "prompts": PROMPTS}
    env = CacheScheduleVecEnv(2, config, pipe=build_text_pipeline("wan"), seed=0)
    env.reset()  # references are generated uncached: the engine's decisions count this episode's only
    steps = 0
    while True:
        _, _, dones, infos = env.step(np.ones((2, env.engine.num_groups), dtype=np.int64))
        steps += 1
        if dones.all():
            break
    assert steps == 3 and env.engine.stats.decisions == 6
    assert 0.0 < infos[0]["compute_fraction"] < 1.0 and infos[0]["condition"] in PROMPTS
    env.close()


def test_unknown_pipelines_name_the_families_and_how_to_register_one() -> None:
    class MyPipeline(DiffusionPipeline):
        pass

    pipe = MyPipeline()
    with pytest.raises(ValueError, match=r"MyPipeline is not a supported pipeline.*pixart-sigma.*register_family"):
        family_of(pipe)
    family = register_family(PipelineFamily("mine", ("MyPipeline",), "class_labels", "batched_cfg", "cond_uncond"))
    try:
        assert family_of(pipe) is family
        with pytest.raises(ValueError, match="registered already"):
            register_family(family)
    finally:
        unregister_family("mine")
    with pytest.raises(ValueError, match="needs an encode function"):
        PipelineFamily("text", ("X",), "prompt", "batched_cfg", "uncond_cond")


def test_wrong_conditions_for_the_model_say_what_to_give() -> None:
    guidance, kwargs = call_kwargs("pixart-alpha")
    with pytest.raises(ConfigError, match=r"conditioned on text, so it needs prompts: pass --prompts"):
        make_sampler(EnvConfig(pipeline_kwargs=kwargs), build_text_pipeline("pixart-alpha"))
    with pytest.raises(ConfigError, match=r"conditioned on class labels, not prompts: drop --prompts"):
        make_sampler(EnvConfig(prompts=PROMPTS), build_dit_pipeline())
    sampler = Sampler(build_text_pipeline("pixart-alpha"), call_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"takes prompts, got class labels"):
        sampler([3], [0], 2, guidance)

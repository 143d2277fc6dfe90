"""Episodes drawn across step counts and schedulers: validation, deterministic draws, references and rewards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs import CacheScheduleEnv, CacheScheduleVecEnv, ConfigError, EnvConfig, from_dict
from envs.sampling import SamplingSetting, draw_setting
from tests.digits_fixtures import tiny_digits_pipeline

GROUPS = 2
RANGES = {"num_inference_steps": [3, 5], "scheduler": ["ddim", "dpmsolver++"], "groups": GROUPS}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_inference_steps": [4]}, r"num_inference_steps=\[4\]: give a step count, or \[low, high\]"),
        ({"num_inference_steps": [6, 4]}, "2 <= low <= high"),
        ({"num_inference_steps": [1, 4]}, "2 <= low <= high"),
        ({"num_inference_steps": 1}, "use at least 2"),
        ({"num_inference_steps": "ten"}, r"env\.num_inference_steps='ten' has the wrong type"),
        ({"num_inference_steps": [4, 5.5]}, r"env\.num_inference_steps=.* has the wrong type"),
        ({"scheduler": ["ddim", "ddim"]}, r"env\.scheduler=\['ddim', 'ddim'\]: .* naming each of them at most once"),
        ({"scheduler": ["ddim", "pndm"]}, r"env\.scheduler=.*: use one of"),
        ({"scheduler": []}, r"env\.scheduler=\[\]"),
        ({"scheduler": "pndm"}, r"env\.scheduler='pndm'"),
    ],
)
def test_bad_steps_and_schedulers_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(EnvConfig, fields, prefix="env.")


def test_fixed_settings_keep_their_types_and_draw_nothing() -> None:
    config = from_dict(EnvConfig, {"num_inference_steps": 7, "scheduler": "ddim"})
    assert config.steps_range == (7, 7) and config.scheduler_names == ["ddim"] and config.fixed_sampling
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert draw_setting(rng, config) == SamplingSetting("ddim", 7)
    assert rng.bit_generator.state == state  # the episode draws of a fixed config are those of before ranges


def test_draws_cover_the_range_and_both_schedulers_deterministically() -> None:
    config = from_dict(EnvConfig, RANGES)
    assert not config.fixed_sampling

    def draws(seed: int) -> list[SamplingSetting]:
        rng = np.random.default_rng(seed)
        return [draw_setting(rng, config) for _ in range(60)]

    first = draws(0)
    assert first == draws(0) and first != draws(1)
    assert {s.steps for s in first} == {3, 4, 5}
    assert {s.scheduler for s in first} == {"ddim", "dpmsolver++"}
    fixed = draw_setting(np.random.default_rng(0), config, {"num_inference_steps": 9, "scheduler": "euler"})
    assert fixed == SamplingSetting("euler", 9)
    with pytest.raises(ConfigError, match="num_inference_steps=1"):
        draw_setting(np.random.default_rng(0), config, {"num_inference_steps": 1})
    with pytest.raises(ConfigError, match="scheduler='pndm'"):
        draw_setting(np.random.default_rng(0), config, {"scheduler": "pndm"})


def test_vector_env_draws_one_setting_per_batch_and_runs_it() -> None:
    pipe = tiny_digits_pipeline()
    seen = []
    for _ in range(2):  # the same seed: the same batches
        venv = CacheScheduleVecEnv(2, {**RANGES, "budget_conditioned": False}, pipe, seed=4)
        batches = []
        venv.reset()
        for _ in range(5):
            infos = venv.reset_infos
            setting = {(i["num_inference_steps"], i["scheduler"]) for i in infos}
            assert len(setting) == 1  # every sub-environment of a batch shares it
            ((steps, scheduler),) = setting
            assert venv.episodes.pipe.scheduler is venv.episodes.schedulers.scheduler(scheduler)
            for step in range(steps):
                _, rewards, dones, step_infos = venv.step(np.zeros((2, GROUPS), dtype=np.int64))
                assert dones.all() == (step == steps - 1)  # the episode lasts the drawn number of steps
            assert [(i["num_inference_steps"], i["scheduler"]) for i in step_infos] == [(steps, scheduler)] * 2
            assert rewards == pytest.approx([-venv.config.reward.compute_cost / steps] * 2, abs=1e-4)
            batches.append((steps, scheduler))
        seen.append(batches)
        venv.close()
    assert seen[0] == seen[1]
    assert len(set(seen[0])) > 1


def test_set_options_fix_the_setting_for_the_whole_batch() -> None:
    venv = CacheScheduleVecEnv(2, RANGES, tiny_digits_pipeline(), seed=0)
    venv.set_options({"num_inference_steps": 4, "scheduler": "dpmsolver++"})
    venv.reset()
    assert {(i["num_inference_steps"], i["scheduler"]) for i in venv.reset_infos} == {(4, "dpmsolver++")}
    venv.set_options([{"scheduler": "ddim"}, {"scheduler": "dpmsolver++"}])
    with pytest.raises(ValueError, match="different scheduler values"):
        venv.reset()
    venv.close()


def test_references_are_kept_per_scheduler_and_steps(tmp_path: Path) -> None:
    settings = [("ddim", 4), ("dpmsolver++", 4), ("ddim", 5)]
    config = {**RANGES, "reference_cache_dir": str(tmp_path)}
    generated = []
    for _ in range(2):
        env = CacheScheduleEnv(config, pipe=tiny_digits_pipeline())
        images, counts = [], []
        for scheduler, steps in settings:
            options = {"condition": 1, "seed": 10, "scheduler": scheduler, "num_inference_steps": steps}
            _, info = env.reset(seed=0, options=options)
            assert (info["scheduler"], info["num_inference_steps"]) == (scheduler, steps)
            (reference,) = env.episodes.references.get([1], [10])
            assert reference.latents.shape[0] == steps
            images.append(reference.image)
            counts.append(env.episodes.references.generated)
        generated.append(counts)
        env.close()
        assert not torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
    assert generated == [[1, 1, 1], [0, 0, 0]]  # three keys on disk, read back by the second environment
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_single_env_draws_per_episode_and_divides_the_cost_by_its_steps() -> None:
    env = CacheScheduleEnv({**RANGES, "budget_conditioned": False}, pipe=tiny_digits_pipeline())
    lengths = set()
    env.reset(seed=2)
    for _ in range(6):
        _, info = env.reset()
        rewards, done = [], False
        while not done:
            _, reward, done, _, final = env.step(np.zeros(GROUPS, dtype=np.int64))
            rewards.append(reward)
        assert len(rewards) == info["num_inference_steps"] == final["num_inference_steps"]
        assert final["scheduler"] == info["scheduler"] and final["psnr"] == float("inf")
        assert sum(rewards) == pytest.approx(-env.config.reward.compute_cost, abs=1e-5)
        lengths.add(len(rewards))
    env.close()
    assert len(lengths) > 1

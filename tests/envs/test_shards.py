"""Environment shards (sub-batches run as separate generations) hold whole groups of rollouts of one draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runtime
from envs import CacheScheduleVecEnv
from envs.shards import check_shard_split


def test_a_shard_count_that_cuts_a_group_is_refused_with_the_counts_that_fit() -> None:
    check_shard_split(16, 4, 4)
    check_shard_split(16, 2, 4)
    check_shard_split(6, 3)
    with pytest.raises(ValueError, match=r"16 does not split into 3 shards .* one of \[1, 2, 4\]"):
        check_shard_split(16, 3, 4)
    with pytest.raises(ValueError, match=r"one of \[1, 2\]"):
        check_shard_split(8, 4, 4)  # equal shards of two rollouts each would cut both groups in half


def test_local_shards_keep_each_group_in_one_shard(tiny_digits_dir: Path) -> None:
    config = {"model": str(tiny_digits_dir), "num_inference_steps": 4, "groups": 2, "group_rollouts": 2}
    with pytest.raises(ValueError, match="whole groups"):
        CacheScheduleVecEnv(4, config, shards=4)  # refused before any pipeline is loaded or copied
    venv = CacheScheduleVecEnv(8, config, seed=3, shards=2)
    try:
        venv.reset()
        draws = [(i["condition"], i["seed"], i["budget"]) for i in venv.reset_infos]
        assert draws[0::2] == draws[1::2] and len(set(draws)) == 4  # 4 groups of 2: shard 0 holds two, shard 1 two
        rng = np.random.default_rng(0)
        for _ in range(4):
            _, rewards, dones, infos = venv.step(rng.integers(0, runtime.NUM_ACTIONS, size=(8, 2)))
            np.testing.assert_allclose(rewards.reshape(4, 2).sum(axis=1), 0.0, atol=1e-5)
            own = np.array([info["reward"] for info in infos])
            np.testing.assert_allclose(rewards, own - own.reshape(4, 2).mean(axis=1).repeat(2), atol=1e-5)
        assert dones.all()
    finally:
        venv.close()

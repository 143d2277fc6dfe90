"""The vector environment with its shards on Ray workers: the local rollouts, also when a worker dies mid-episode."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import ray

from distributed import RayShards, WorkerPool
from envs import CacheScheduleVecEnv
from envs.config import EnvConfig

STEPS = 10  # two and a half episodes of 4 steps: auto-resets and a rollout ending mid-episode


def rollout(venv: CacheScheduleVecEnv, kill_at: int | None = None, pool: WorkerPool | None = None) -> list:
    """Observations, rewards, dones, masks and the infos' metrics of ``STEPS`` steps of seeded random actions."""
    rng = np.random.default_rng(0)
    out: list = [venv.reset(), venv.action_masks()]
    for step in range(STEPS):
        if step == kill_at:
            pid = ray.get(pool.actors[1].ready.remote())["pid"]
            os.kill(pid, signal.SIGKILL)  # the worker of shard 1 dies in the middle of an episode
        venv.step_async(rng.integers(0, 3, size=(venv.num_envs, 2)))
        observations, rewards, dones, infos = venv.step_wait()
        metrics = [(i.get("psnr"), i.get("compute_fraction"), i.get("seed")) for i in infos]
        out += [observations, rewards, dones, venv.action_masks(), metrics]
    venv.close()
    return out


def assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def test_ray_shards_step_as_local_shards(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    local = rollout(CacheScheduleVecEnv(4, tiny_env, seed=0, shards=2))
    remote = rollout(CacheScheduleVecEnv(4, tiny_env, seed=0, shards=RayShards(env_pool, tiny_env, 2)))
    assert_same(local, remote)


def test_one_shard_on_ray_is_the_plain_environment(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    local = rollout(CacheScheduleVecEnv(4, tiny_env, seed=1))
    remote = rollout(CacheScheduleVecEnv(4, tiny_env, seed=1, shards=RayShards(env_pool, tiny_env, 1)))
    assert_same(local, remote)


def test_ray_shards_keep_rollout_groups_whole(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    """Groups of two rollouts of one draw, two groups per shard: each group's rewards relative to its own mean, as
    in one process; a shard count that would cut a group is refused."""
    grouped = dataclasses.replace(tiny_env, group_rollouts=2)
    local = rollout(CacheScheduleVecEnv(8, grouped, seed=4, shards=2))
    remote = rollout(CacheScheduleVecEnv(8, grouped, seed=4, shards=RayShards(env_pool, grouped, 2)))
    assert_same(local, remote)
    for rewards in remote[3::5]:
        np.testing.assert_allclose(rewards.reshape(4, 2).sum(axis=1), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="whole groups"):
        CacheScheduleVecEnv(4, grouped, shards=RayShards(env_pool, grouped, 4))


def test_a_worker_killed_mid_episode_is_restarted_and_replays_it(env_pool: WorkerPool, tiny_env: EnvConfig) -> None:
    local = rollout(CacheScheduleVecEnv(4, tiny_env, seed=2, shards=2))
    venv = CacheScheduleVecEnv(4, tiny_env, seed=2, shards=RayShards(env_pool, tiny_env, 2))
    remote = rollout(venv, kill_at=6, pool=env_pool)  # step 2 of the second episode
    assert_same(local, remote)
    stats = ray.get(env_pool.actors[1].stats.remote())
    assert stats["restarted"] and stats["replayed_steps"] == 2  # begun again, its two steps taken again

"""Schedule search: the starting schedules, agreement with the engine's TaylorSeer, and a constant-cost search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import runtime
from envs.pipelines import generate
from policies import TaylorSeer
from reporting.schedule_search import ScheduleSearch
from reporting.setting_search import search_schedules
from runtime import EngineOptions
from tests.digits_fixtures import tiny_digits_pipeline
from zoo.metrics import capped_psnr

OPTIONS = EngineOptions(groups=2, probe_blocks=0, forecast_order=1)
COMPUTE = int(runtime.Action.COMPUTE)


@pytest.fixture(scope="module")
def search() -> ScheduleSearch:
    return ScheduleSearch(tiny_digits_pipeline(), [1, 2, 3], [5, 6, 7], steps=8, guidance=2.0, engine_options=OPTIONS)


def test_starting_schedules_spend_the_budget(search: ScheduleSearch) -> None:
    even = search.evenly_spaced(0.5)
    assert even.shape == (8, 2)
    assert np.flatnonzero((even == COMPUTE).all(axis=1)).tolist() == [0, 2, 4, 6]
    early = search.evenly_spaced(0.5, warp=1.5)
    late = search.evenly_spaced(0.5, warp=0.7)
    for table in (early, late):
        computed = np.flatnonzero((table == COMPUTE).all(axis=1))
        assert len(computed) == 4 and computed[0] == 0
    assert np.flatnonzero(early[:, 0] == COMPUTE).mean() < 3.0 < np.flatnonzero(late[:, 0] == COMPUTE).mean()


def test_evenly_spaced_schedule_scores_like_taylorseer(search: ScheduleSearch) -> None:
    pipe = search.pipe
    runtime.enable_cache(pipe.transformer, TaylorSeer(2, 1), OPTIONS)
    try:
        with torch.inference_mode():
            images = generate(pipe, search.conditions, search.seeds, 8, 2.0)
    finally:
        runtime.disable_cache(pipe.transformer)
    expected = float(capped_psnr(images, search.reference, 60.0).mean())
    scores = search.evaluate([search.evenly_spaced(0.5), search.evenly_spaced(1.0)])
    assert scores[0] == pytest.approx(expected, abs=1e-3)
    assert scores[1] == pytest.approx(60.0)  # computing everything reproduces the reference


def test_search_keeps_the_cost_and_never_loses_quality(search: ScheduleSearch) -> None:
    found = search.search(0.4, sweeps=1)
    start_cells = int((search.evenly_spaced(0.4) == COMPUTE).sum())
    assert int((found.schedule == COMPUTE).sum()) == start_cells
    assert (found.schedule[0] == COMPUTE).all()
    assert found.psnr >= found.start_psnr
    assert found.evaluations > 1
    assert search.evaluate([found.schedule])[0] == pytest.approx(found.psnr, abs=1e-4)


def test_search_in_worker_processes_matches_in_process(tiny_digits_dir) -> None:
    arguments = dict(conditions=[1, 2], seeds=[5, 6], steps=6, guidance=2.0, engine_options=OPTIONS, sweeps=1)
    here = search_schedules(str(tiny_digits_dir), [0.5], workers=1, **arguments)
    there = search_schedules(str(tiny_digits_dir), [0.5], workers=2, **arguments)
    np.testing.assert_array_equal(here[0].schedule, there[0].schedule)
    assert here[0].psnr == pytest.approx(there[0].psnr, abs=1e-3)


def test_per_sample_search_keeps_each_samples_cost_and_scores_what_it_reports(search: ScheduleSearch) -> None:
    results = search.search_per_sample(0.4, sweeps=1)
    start_cells = int((search.evenly_spaced(0.4) == COMPUTE).sum())
    assert len(results) == len(search.seeds)
    for sample, found in enumerate(results):
        assert int((found.schedule == COMPUTE).sum()) == start_cells
        assert found.psnr >= found.start_psnr
        assert found.evaluations > 1
        replayed = search.evaluate_per_sample([found.schedule], [sample])[0]
        assert replayed == pytest.approx(found.psnr, abs=0.05)
    # Each sample's own schedule does at least as well on it as the shared schedule searched on all of them.
    shared = search.search(0.4, sweeps=1).schedule
    on_each = search.evaluate_per_sample([shared] * len(results), list(range(len(results))))
    assert np.mean([r.psnr for r in results]) >= float(np.mean(on_each)) - 1e-3


def test_per_sample_search_of_one_sample_is_the_search_on_that_sample() -> None:
    alone = ScheduleSearch(tiny_digits_pipeline(), [2], [6], steps=8, guidance=2.0, engine_options=OPTIONS)
    (found,) = alone.search_per_sample(0.4, sweeps=1)
    expected = alone.search(0.4, sweeps=1)
    np.testing.assert_array_equal(found.schedule, expected.schedule)
    assert found.psnr == pytest.approx(expected.psnr, abs=1e-4)


def test_evaluate_per_sample_needs_one_sample_per_table(search: ScheduleSearch) -> None:
    with pytest.raises(ValueError, match="one search sample per table"):
        search.evaluate_per_sample([search.evenly_spaced(0.5)], [0, 1])


def test_search_settings_searches_each_anchor_with_its_scheduler_and_sweeps(tiny_digits_dir) -> None:
    from envs.pipelines import prepare_pipeline
    from envs.sampling import SamplingSetting
    from reporting.setting_search import search_settings

    ddim, dpm = SamplingSetting("ddim", 6), SamplingSetting("dpmsolver++", 4)
    arguments = dict(conditions=[1, 2], seeds=[5, 6], guidance=2.0, engine_options=OPTIONS, sweeps=1)
    found = search_settings(str(tiny_digits_dir), [ddim, dpm], [0.5], sweeps_at={dpm: 0}, **arguments)
    (at_ddim,), (at_dpm,) = found[ddim], found[dpm]
    assert at_ddim.schedule.shape == (6, 2) and at_dpm.schedule.shape == (4, 2)
    assert at_ddim.evaluations > 5  # five starting spacings, then moves
    assert at_dpm.evaluations == 5 and at_dpm.psnr >= at_dpm.start_psnr  # no sweep: the best start only
    # Each anchor ran with its own scheduler: its schedule scores what the search reported under that scheduler.
    for setting, result in ((ddim, at_ddim), (dpm, at_dpm)):
        pipe = prepare_pipeline(tiny_digits_pipeline(), setting.scheduler)
        again = ScheduleSearch(pipe, [1, 2], [5, 6], steps=setting.steps, guidance=2.0, engine_options=OPTIONS)
        assert again.evaluate([result.schedule])[0] == pytest.approx(result.psnr, abs=0.05)  # other batch: rounding
